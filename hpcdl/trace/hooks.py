"""The wrapper the collectives put around an operation while tracing is on."""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable

from . import comm_label, now, record

__all__ = ["traced", "next_seq"]

_SEQ: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()
_SEQ_LOCK = threading.Lock()


def next_seq(comm: Any) -> int:
    """This rank's count of operations started on ``comm``: the same on every member
    for the same operation (collectives start in the same order everywhere)."""
    with _SEQ_LOCK:
        seq = _SEQ.get(comm, 0)
        _SEQ[comm] = seq + 1
    return seq


def traced(comm: Any, name: str, run: Callable[[], Any], nbytes: int, algorithm: str,
           queued: bool) -> Callable[[], Any]:
    """``run`` recording a ``collective`` event (and, when ``queued``, the ``queue`` wait
    between submission and start on the progress thread)."""
    seq = next_seq(comm)
    label = comm_label(comm)
    submitted = now()

    def wrapped() -> Any:
        t0 = now()
        if queued:
            record(name, "queue", submitted, t0, seq=seq)
        try:
            return run()
        finally:
            record(name, "collective", t0, now(), bytes=nbytes, algorithm=algorithm,
                   comm=label, seq=seq)
    return wrapped
