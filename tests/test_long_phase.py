"""Peer timeouts count silence, not work: a rank in a long evaluation says so
(``long_phase``: heartbeats), so a short parameter-server or P-Reduce timeout does not
kill a healthy job; a rank stuck outside such a phase still ends it, named."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.job_launch import launch

JOBS = Path(__file__).parent / "jobs" / "wait_jobs.py"


@pytest.mark.spawns
@pytest.mark.parametrize("kind,ranks", [("ps-eval", 3), ("preduce-eval", 3)])
def test_a_long_evaluation_outlasts_the_peer_timeout(kind, ranks):
    # The peers' timeout is 4 s; rank 1 evaluates for 12 s while the others wait for it.
    done, _ = launch(ranks, JOBS, kind, 12, "0", limit=150)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-3000:]
    assert report.count(f"finished {kind}") == ranks, report[-3000:]


@pytest.mark.spawns
@pytest.mark.parametrize("kind,ranks,stuck,says", [
    ("ps-stuck", 3, 1, "workers it waits for: ranks [1]"),
    ("preduce-stuck", 3, 2, "ranks still computing: [2]")])
def test_a_stuck_rank_still_ends_the_job(kind, ranks, stuck, says):
    done, elapsed = launch(ranks, JOBS, kind, 120, "0", limit=150)
    report = done.stdout + done.stderr
    assert done.returncode != 0, report[-3000:]
    assert says in report, report[-3000:]
    assert "finished" not in report
    assert elapsed < 90, elapsed
