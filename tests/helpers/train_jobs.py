"""The main job launched from a test (the serial pass's ``spawns`` tests of checkpoints):
a clean environment, a run to its end, and a run killed once its first checkpoint exists."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def clean_env() -> dict[str, str]:
    """This environment without the MPI launcher's variables (a clean launch even when
    pytest itself runs under mpiexec) and without a watchdog timeout."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for k in [k for k in env if k.startswith(("OMPI_", "PMIX_", "PRTE_"))]:
        env.pop(k)
    env.pop("HPCDL_TIMEOUT", None)
    return env


def train_cmd(n: int, out: Path, *args: str) -> list[str]:
    """``hpcdl launch -n N -- python -m hpcdl.examples.train`` writing into ``out``."""
    hpcdl_cli = Path(sys.executable).parent / "hpcdl"
    return [str(hpcdl_cli), "launch", "-n", str(n), "--", "python", "-m", "hpcdl.examples.train",
            "--threads", "1", "--out", str(out), *args]


def run_job(cmd: list[str], out: Path, timeout: float = 900) -> dict:
    """Run the job to its end: its metrics.json, plus its stderr under ``"stderr"``."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    return {**json.loads((out / "metrics.json").read_text()), "stderr": done.stderr}


def kill_after_first_checkpoint(cmd: list[str], ckdir: Path, out: Path,
                                wait_s: float = 300) -> None:
    """Start the job and SIGKILL every process of it (launcher and ranks alike, no
    goodbye) as soon as ``ckdir/latest`` exists; it must not have finished by then."""
    proc = subprocess.Popen(cmd, env=clean_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + wait_s
        while not (ckdir / "latest").exists():
            assert proc.poll() is None, "the job ended before its first checkpoint"
            assert time.monotonic() < deadline, f"no checkpoint within {wait_s:g} s"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert not (out / "metrics.json").exists(), "killed too late: the run had finished"
