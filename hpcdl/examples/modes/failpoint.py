"""A test-only failure: ``HPCDL_TEST_SIGKILL="RANK:STEP"`` makes job rank RANK SIGKILL
itself after its optimizer step STEP (counted from 1), as a crashed node would, so the
fault-tolerance tests (tests/test_ft_modes.py) kill a rank at a known point;
``RANK:@SECONDS`` kills it SECONDS after :func:`arm` (for a rank that takes no steps, a
parameter server). Several pairs may be given, comma-separated. Unset: nothing happens."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

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


def arm(rank: int) -> None:
    """Start the timer of a ``RANK:@SECONDS`` plan for ``rank`` (a daemon thread)."""
    when = _PLAN.get(rank, "")
    if when.startswith("@"):
        seconds = float(when[1:])
        threading.Thread(target=lambda: (time.sleep(seconds),
                                         _die(rank, f"{seconds:g} s after start")),
                         daemon=True, name="hpcdl-failpoint").start()
