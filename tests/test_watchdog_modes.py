"""Every wait in hpcdl is seen by the watchdog: in each mode, one rank that sleeps (alive,
making no MPI call) while the others wait for it is named within timeout + 10 s.

The waits there are polling loops and request waits, not MPI calls on a watched
communicator, so they declare themselves (hpcdl.watchdog.waiting)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from helpers.job_launch import fell_asleep, launch

JOBS = Path(__file__).parent / "jobs" / "wait_jobs.py"
TIMEOUT = 6


# (kind, ranks, the stalled rank, what the waiting ranks wait in)
CASES = [("ps-sync", 3, 1, "ps."), ("preduce", 3, 2, "preduce"),
         ("pipeline", 2, 1, "torch "), ("torch-p2p", 2, 1, "torch recv")]


@pytest.mark.spawns
@pytest.mark.parametrize("kind,ranks,stalled,op", CASES, ids=[c[0] for c in CASES])
def test_a_stalled_rank_is_named_in_every_mode(kind, ranks, stalled, op):
    done, _ = launch(ranks, JOBS, kind, 120, str(TIMEOUT), limit=150)
    ended = time.time()
    report = done.stdout + done.stderr
    assert done.returncode != 0, report[-3000:]
    assert "watchdog:" in report and op in report, report[-3000:]
    assert f"ranks that have not arrived: {stalled}\n" in report, report[-3000:]
    assert f"rank {stalled}: " in report and "inside no MPI call" in report, report[-3000:]
    assert "finished" not in report
    late = ended - fell_asleep(report)
    print(f"{kind}: job ended {late:.1f} s after rank {stalled} fell asleep "
          f"(HPCDL_TIMEOUT={TIMEOUT})")
    assert late <= TIMEOUT + 10, (late, report[-2000:])
