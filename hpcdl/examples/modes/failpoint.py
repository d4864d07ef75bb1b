"""A test-only failure: ``HPCDL_TEST_SIGKILL="RANK:STEP"`` makes job rank RANK SIGKILL
itself after its optimizer step STEP (counted from 1), as a crashed node would, so the
fault-tolerance tests (tests/test_ft_modes.py) kill a rank at a known point. A rank
that takes no steps of its own (a parameter server) counts what :func:`arm` is given
(its applied updates). Several pairs may be given, comma-separated. Unset: nothing
happens."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Callable

__all__ = ["maybe_die", "arm"]


def _plan() -> dict[int, str]:
    out = {}
    for item in os.environ.get("HPCDL_TEST_SIGKILL", "").split(","):
        if item.strip():
            rank, when = item.split(":")
            out[int(rank)] = when.strip()
    return out


_PLAN = _plan()


def _die(rank: int, what: str) -> None:
    sys.stderr.write(f"failpoint: rank {rank} SIGKILLs itself {what} at {time.time():.3f}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def maybe_die(rank: int, step: int) -> None:
    """SIGKILL this process if the plan says ``rank`` dies after ``step``."""
    if _PLAN.get(rank) == str(step):
        _die(rank, f"after step {step}")


def arm(rank: int, count: Callable[[], int]) -> None:
    """For a rank whose loop is not ours: a daemon thread SIGKILLs it once ``count()``
    (read every millisecond) reaches the plan's step for ``rank``."""
    when = _PLAN.get(rank)
    if when is None:
        return
    step = int(when)

    def watch() -> None:
        while count() < step:
            time.sleep(0.001)
        _die(rank, f"after update {step}")

    threading.Thread(target=watch, daemon=True, name="hpcdl-failpoint").start()
