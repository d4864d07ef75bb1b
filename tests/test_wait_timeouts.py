"""The torch backend honours the timeout it is given: ``init_process_group(timeout=)``
and ``HPCDL_PIPELINE_TIMEOUT`` bound every wait (they were dropped: waits took 1800 s)."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import pytest

from helpers.job_launch import launch

JOBS = Path(__file__).parent / "jobs" / "wait_jobs.py"


@pytest.mark.spawns
@pytest.mark.parametrize("kind,env", [("pipeline-timeout", {"HPCDL_PIPELINE_TIMEOUT": "3"}),
                                      ("torch-timeout", {})])
def test_a_receive_gives_up_after_the_groups_timeout(kind, env):
    # Rank 1 sleeps 60 s before sending; the watchdog is off, so only the group's 3 s
    # timeout can end rank 0's receive.
    done, _ = launch(2, JOBS, kind, 60, "0", limit=120, extra_env=env)
    report = done.stdout + done.stderr
    assert done.returncode != 0, report[-3000:]
    gave_up = re.search(r"rank 0 gave up after ([\d.]+) s: .*within 3 s", report)
    assert gave_up, report[-3000:]
    assert float(gave_up.group(1)) < 15, gave_up.group(0)
    assert "group's timeout" in report


def test_wait_timeout_sources(monkeypatch):
    from hpcdl.torch.backend.work import wait_timeout

    monkeypatch.setenv("HPCDL_TORCH_TIMEOUT", "77")
    assert wait_timeout() == (77.0, "HPCDL_TORCH_TIMEOUT")
    assert wait_timeout(5.0)[0] == 5.0                           # the group's
    assert wait_timeout(5.0, datetime.timedelta(seconds=2))[0] == 2.0   # the call's
    assert wait_timeout(None, datetime.timedelta(0))[0] == 77.0
