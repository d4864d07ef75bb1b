"""Horovod's own example scripts, with only their ``import horovod`` lines changed,
run under ``hpcdl launch -n 2`` (tests/jobs/horovod_examples/; torchvision comes from the
shim there: see its __init__.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "jobs" / "horovod_examples"


def _launch(script: str, *args: str, timeout: int = 300) -> str:
    hpcdl_cli = Path(sys.executable).parent / "hpcdl"
    cmd = [str(hpcdl_cli), "launch", "-n", "2", "--", "python", str(HERE / script), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE / "shim"), os.environ.get("PYTHONPATH", "")])}
    for k in [k for k in env if k.startswith(("OMPI_", "PMIX_", "PRTE_"))]:
        env.pop(k)  # a clean launch even when pytest itself runs under mpiexec
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_examples_differ_from_horovod_only_in_imports():
    for script in ("pytorch_mnist.py", "pytorch_synthetic_benchmark.py"):
        text = (HERE / script).read_text()
        assert "import hpcdl.horovod.torch as hvd" in text
        assert not re.search(r"^import horovod|^from horovod", text, re.M)


@pytest.mark.spawns
def test_pytorch_mnist_two_ranks():
    out = _launch("pytorch_mnist.py", "--epochs", "3", "--lr", "0.05", "--momentum", "0.9",
                  "--log-interval", "100")
    accuracies = [float(a) for a in re.findall(r"Accuracy: ([0-9.]+)%", out)]
    assert len(accuracies) == 3, out[-2000:]
    # The metric-averaging idiom (hvd.allreduce averages): a sum would exceed 100%.
    assert accuracies[-1] >= 70.0 and max(accuracies) <= 100.0, accuracies


@pytest.mark.spawns
def test_pytorch_synthetic_benchmark_two_ranks():
    # fp16 compression: the path through hpcdl.compression (Adasum is covered in
    # test_horovod.py; one launch here keeps the suite's budget).
    out = _launch("pytorch_synthetic_benchmark.py", "--model", "small_cnn", "--batch-size", "8",
                  "--num-warmup-batches", "2", "--num-batches-per-iter", "2", "--num-iters", "2",
                  "--fp16-allreduce")
    assert "Number of CPUs: 2" in out
    assert re.search(r"Total img/sec on 2 CPU\(s\): [0-9.]+ \+-[0-9.]+", out), out[-2000:]
