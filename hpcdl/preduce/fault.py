"""A P-Reduce session's side of a dead rank (ULFM, ``HPCDL_FT=1``; docs/fault-tolerance.md).

The session's buffer is averaged in place, so before each average in FT mode the
session keeps a copy: an average that a dead member broke is undone (:func:`restore`).
A dead controller (rank 0) ends the job: who is ready, the step count and the open
group live only in its thread, so no survivor can take over (:func:`controller_failure`).
"""

from __future__ import annotations

from typing import Any

from mpi4py import MPI

from ..errors import ProcessFailed
from ..ulfm import ack_failed, is_process_failure

__all__ = ["copy", "restore", "probe", "controller_failure"]


def copy(x: Any) -> Any:
    """A copy of ``x`` (torch tensor, NumPy or CuPy array) that :func:`restore` puts back."""
    return x.clone() if hasattr(x, "clone") else x.copy()


def restore(x: Any, saved: Any) -> None:
    if hasattr(x, "copy_"):
        x.copy_(saved)
    else:
        x[...] = saved


def controller_failure(ctl: MPI.Comm, exc: BaseException, rank: int, size: int) -> None:
    """Raise a ProcessFailed naming rank 0 when ``exc`` says the controller died; a
    death of another rank is acknowledged and left to the controller; else nothing."""
    if not is_process_failure(exc):
        return
    dead = ack_failed(ctl)
    if 0 in dead:
        raise ProcessFailed("rank 0 died: it ran the P-Reduce controller, whose state (who is "
                            "ready, the step count, the open group) exists only there, so the "
                            "session cannot go on", failed=(0,), rank=rank, size=size,
                            op="preduce") from exc


def probe(ctl: MPI.Comm, tag: int, rank: int, size: int) -> bool:
    """``Iprobe`` from the controller; in FT mode a dead controller raises (naming it)
    and another rank's death is acknowledged (the controller handles it)."""
    try:
        return bool(ctl.Iprobe(0, tag))
    except MPI.Exception as exc:
        controller_failure(ctl, exc, rank, size)
        if not is_process_failure(exc):
            raise
        return False
