"""Launch a test job script on n ranks with ``hpcdl launch`` (the serial pass's ``spawns``
tests of the watchdog and of the waits' timeouts): a clean environment, and a job that
hangs is killed by its process group, so no rank outlives the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["launch", "run_bounded", "fell_asleep"]


def launch(n: int, script: Path, kind: str, seconds: float, timeout_env: str | None,
           limit: float = 120, extra_env: dict[str, str] | None = None
           ) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``script KIND SECONDS`` on n ranks; a job still running after ``limit`` seconds
    (a hang) is killed, launcher and ranks alike, and its output returned (rc -9)."""
    hpcdl_cli = Path(sys.executable).parent / "hpcdl"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for k in [k for k in env if k.startswith(("OMPI_", "PMIX_", "PRTE_"))]:
        env.pop(k)  # a clean launch even when pytest itself runs under mpiexec
    env.pop("HPCDL_TIMEOUT", None)
    if timeout_env is not None:
        env["HPCDL_TIMEOUT"] = timeout_env
    env.update(extra_env or {})
    cmd = [str(hpcdl_cli), "launch", "-n", str(n), "--", "python", str(script), kind,
           str(seconds)]
    return run_bounded(cmd, env, limit)


def run_bounded(cmd: list[str], env: dict[str, str], limit: float, cwd: Path | None = None
                ) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``cmd`` in its own session; still running after ``limit`` seconds (a hang), it
    is killed by its process group, launcher and ranks alike, and its output returned
    (rc -9). Returns the finished process and its wall time."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
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


def fell_asleep(report: str) -> float:
    """The time (``time.time()``) the job's stalled rank printed it fell asleep."""
    return float(report.split("sleeping since ")[1].split()[0])
