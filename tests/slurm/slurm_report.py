"""A pytest plugin for ``make slurm-test`` (``-p slurm_report``; not a conftest.py, whose
module name ``conftest`` would shadow ``tests/conftest.py`` for ``from conftest import``).

Inside ``jobs/local-slurm/cluster.sh``: write one line per failed test into the
cluster's folder, which cluster.sh prints last, after the daemons' log tails, so the
end of a failed run names the test that failed (and the job, state and exit code
its message starts with) instead of whatever the daemons logged last."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FAILURES = "failures.txt"  # read by jobs/local-slurm/cluster.sh


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config) -> None:
    """The jobs' output folders under the cluster's own folder: HPCDL_SLURM_KEEP=1 keeps
    them beside the daemons' logs of the same run, and otherwise they go with it."""
    folder = os.environ.get("HPCDL_LOCAL_SLURM_DIR")
    if folder and config.option.basetemp is None:
        config.option.basetemp = str(Path(folder) / "pytest")


def pytest_runtest_logreport(report) -> None:
    folder = os.environ.get("HPCDL_LOCAL_SLURM_DIR")
    if not folder or not report.failed:
        return
    message = report.longreprtext.strip().splitlines()
    # pytest's "E   " lines are the assertion message; the first few say job and state.
    first = [ln[1:].strip() for ln in message if ln.startswith("E ")][:3] or message[-1:]
    with open(Path(folder) / FAILURES, "a") as f:
        f.write(f"FAILED {report.nodeid} ({report.when}): {' | '.join(first)}\n")
