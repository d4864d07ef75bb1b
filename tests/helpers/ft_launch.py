"""Run a command on n ranks with ``hpcdl launch --ft`` (ULFM) from a test: a clean
environment, and a job still running after ``limit`` seconds is killed by its process
group (launcher and ranks alike), so no rank outlives the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        err += f"\n(test: killed after {limit} s)"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), \
        time.monotonic() - start
