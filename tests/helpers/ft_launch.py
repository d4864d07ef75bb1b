"""Run a command on n ranks with ``hpcdl launch --ft`` (ULFM) from a test: a clean
environment, and a job still running after ``limit`` seconds is killed by its process
group (launcher and ranks alike), so no rank outlives the test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers.job_launch import run_bounded

__all__ = ["launch_ft"]


def launch_ft(n: int, command: list[str], env: dict[str, str] | None = None,
              limit: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    hpcdl_cli = Path(sys.executable).parent / "hpcdl"
    full = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for k in [k for k in full if k.startswith(("OMPI_", "PMIX_", "PRTE_", "HPCDL_TEST_"))]:
        full.pop(k)  # a clean launch even when pytest itself runs under mpiexec
    full.pop("HPCDL_TIMEOUT", None)
    full.update(env or {})
    cmd = [str(hpcdl_cli), "launch", "-n", str(n), "--ft", "--", *command]
    return run_bounded(cmd, full, limit)
