"""The main job killed with SIGKILL after its first checkpoint and relaunched with
``--resume``: bit-identical final parameters at the same rank count (2 and 4), and a
resume at another rank count (4 -> 2, 2 -> 3) that trains on to the same accuracy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EPOCHS = 2
EVERY = 4            # optimizer steps between checkpoints (12-23 steps per epoch here)


def _cmd(n: int, out: Path, *extra: str) -> list[str]:
    hpcdl_cli = Path(sys.executable).parent / "hpcdl"
    return [str(hpcdl_cli), "launch", "-n", str(n), "--", "python", "-m", "hpcdl.examples.train",
            "--epochs", str(EPOCHS), "--threads", "1", "--out", str(out), *extra]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for k in [k for k in env if k.startswith(("OMPI_", "PMIX_", "PRTE_"))]:
        env.pop(k)  # a clean launch even when pytest itself runs under mpiexec
    env.pop("HPCDL_TIMEOUT", None)
    return env


def _run(n: int, out: Path, *extra: str) -> dict:
    done = subprocess.run(_cmd(n, out, *extra), capture_output=True, text=True, timeout=900,
                          env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    return {**json.loads((out / "metrics.json").read_text()), "stderr": done.stderr}


def _run_and_kill(n: int, out: Path, ckdir: Path) -> None:
    """Start the job, SIGKILL every process of it once the first checkpoint exists."""
    proc = subprocess.Popen(_cmd(n, out, "--checkpoint-dir", str(ckdir), "--checkpoint-every",
                                 str(EVERY)), env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (ckdir / "latest").exists():
            assert proc.poll() is None, "the job ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)   # launcher and ranks alike, no goodbye
        proc.wait(timeout=30)
    assert not (out / "metrics.json").exists(), "killed too late: the run had finished"


@pytest.fixture(scope="module", params=[2, 4])
def killed(request, tmp_path_factory):
    """(rank count, the uninterrupted run's metrics, a copy of the killed run's checkpoints)."""
    n = request.param
    base = tmp_path_factory.mktemp(f"resume{n}")
    reference = _run(n, base / "reference")
    ckdir = base / "ck"
    _run_and_kill(n, base / "killed", ckdir)
    spare = base / "ck-spare"
    shutil.copytree(ckdir, spare)
    return n, reference, ckdir, spare


@pytest.mark.spawns
def test_kill_and_resume_is_bit_identical(killed, tmp_path):
    n, reference, ckdir, _ = killed
    resumed = _run(n, tmp_path, "--checkpoint-dir", str(ckdir), "--checkpoint-every", str(EVERY),
                   "--resume")
    step = resumed["checkpoint"]["resumed_from_step"]
    print(f"{n} ranks: uninterrupted {reference['params_sha256']}\n"
          f"{n} ranks: resumed from step {step} {resumed['params_sha256']}")
    assert step is not None and step >= EVERY and "exact" in resumed["stderr"]
    assert resumed["params_sha256"] == reference["params_sha256"]
    curve = lambda m: [(e["epoch"], e["loss"], e["accuracy"]) for e in m["epochs"]]  # noqa: E731
    assert curve(resumed) == curve(reference)   # the interrupted epoch's loss too
    assert resumed["test_accuracy"] == reference["test_accuracy"]


@pytest.mark.spawns
def test_elastic_resume_on_another_rank_count(killed, tmp_path):
    n, reference, _, spare = killed
    m = {4: 2, 2: 3}[n]
    resumed = _run(m, tmp_path, "--checkpoint-dir", str(spare), "--resume")
    print(f"{n} -> {m} ranks: accuracy {resumed['test_accuracy']:.4f}, uninterrupted at {n}: "
          f"{reference['test_accuracy']:.4f}")
    assert f"elastic: saved at {n} ranks, now {m}" in resumed["stderr"]
    assert resumed["ranks"] == m and len(resumed["epochs"]) == EPOCHS
    assert resumed["test_accuracy"] >= reference["test_accuracy"] - 0.05
