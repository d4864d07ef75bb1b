"""A user's plain DDP script (hpcdl/examples/ddp_script.py), changed only by the import
and the backend name, trains to the single-process weights under ``hpcdl launch -n 2``
and under a bare ``mpiexec -n 4``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpcdl.launch import launch_env, mpi_flavour

SCRIPT = ["-m", "hpcdl.examples.ddp_script"]


def _clean_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for k in [k for k in env if k.startswith(("OMPI_", "PMIX_", "PRTE_", "MASTER_"))]:
        env.pop(k)  # a clean launch even when pytest itself runs under mpiexec
    return env


def _run(cmd: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.spawns
def test_plain_ddp_script_matches_single_process(tmp_path: Path):
    bindir = Path(sys.executable).parent
    env = _clean_env()
    _run([sys.executable, *SCRIPT, "--out", str(tmp_path / "one.pt")], env)
    out = _run([str(bindir / "hpcdl"), "launch", "-n", "2", "--", "python", *SCRIPT,
                "--out", str(tmp_path / "two.pt")], env)
    assert "ranks=2" in out
    mpiexec = str(bindir / "mpiexec")
    # bare mpiexec: only what this machine needs (root, 2 cores for 4 ranks) is added
    bare = launch_env(*mpi_flavour(mpiexec), env)
    out = _run([mpiexec, "-n", "4", sys.executable, *SCRIPT, "--out", str(tmp_path / "four.pt")],
               bare)
    assert "ranks=4" in out
    ref = torch.load(tmp_path / "one.pt")
    for name in ("two.pt", "four.pt"):
        got = torch.load(tmp_path / name)
        for key, value in ref.items():
            torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-5,
                                       msg=f"{name}: {key} differs from one process")
