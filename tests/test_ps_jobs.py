"""Parameter server jobs launched with their own mpiexec (serial pass only):
5 ranks with 2 servers (clean shutdown, everyone exits 0), and a rank killed mid-training."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "jobs"


def _launch(n: int, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    hpcdl_cli = Path(sys.executable).parent / "hpcdl"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for k in [k for k in env if k.startswith(("OMPI_", "PMIX_", "PRTE_"))]:
        env.pop(k)  # a clean launch even when pytest itself runs under mpiexec
    return subprocess.run([str(hpcdl_cli), "launch", "-n", str(n), "--", "python", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.spawns
def test_five_ranks_two_servers_ssp_with_a_slow_worker():
    done = _launch(5, [str(HERE / "ps_five_job.py")], 120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = sorted(line for line in done.stdout.splitlines() if "rank" in line)
    assert len(lines) == 5, done.stdout
    assert sum(line.startswith("server") for line in lines) == 2, lines


@pytest.mark.spawns
@pytest.mark.parametrize("victim", ["worker", "server"])
def test_a_killed_rank_ends_the_job_naming_it(victim):
    start = time.monotonic()
    done = _launch(3, [str(HERE / "ps_crash_job.py"), victim], 120)
    took = time.monotonic() - start
    out = done.stdout + done.stderr
    assert done.returncode != 0, out[-3000:]
    dead = next(line for line in done.stdout.splitlines() if "dies now" in line).split()[1]
    # mpiexec names the rank that died ("... process rank 2 ... exited on signal 9").
    assert f"rank {dead}" in out.split("dies now", 1)[1], out[-3000:]
    assert took < 60, took
