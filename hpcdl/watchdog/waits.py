"""Declared waits: "this thread waits for X on ranks R since T", for the watchdog to read.

The watchdog sees a thread inside a watched MPI call by its innermost frame
(watchdog/comm.py). Every other wait in hpcdl polls (the parameter server's
loops, P-Reduce's reply, the torch backend's ``P2PWork.wait``) or blocks in a
request's ``Wait``; those say what they wait for with::

    with waiting("ps.push_pull", comm, servers):      # comm-local ranks
        while not done():
            ...

``comm`` is the mpi4py communicator ``peers`` are numbered in (``None``:
``COMM_WORLD``); ``peers=None`` means all its ranks. A loop that makes progress
while it waits (the PS server's) calls :meth:`Wait.progress` so only silence
counts. Entering and leaving cost two list operations and a clock read (~0.7 us
with timeit), with or without the watchdog; the translation to world ranks happens
only when the monitor reports.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterable

__all__ = ["waiting", "Wait", "current_waits"]

# thread id -> that thread's stack of open waits (innermost last). A thread touches only
# its own list; the monitor copies the dict (atomic under the GIL) and reads the lists.
_WAITS: dict[int, list["Wait"]] = {}
_now, _ident = time.monotonic, threading.get_ident


class Wait:
    """One declared wait; a context manager (entering records it, leaving removes it)."""

    __slots__ = ("op", "comm", "peers", "since", "_stack")

    def __init__(self, op: str, comm: Any = None, peers: Iterable[int] | None = None) -> None:
        self.op = op
        self.comm = comm
        # Kept as given (the monitor reads it as ranks): no copy on the hot path.
        self.peers = peers
        self.since = 0.0

    def __enter__(self) -> "Wait":
        self.since = _now()
        tid = _ident()
        stack = _WAITS.get(tid)
        if stack is None:
            stack = _WAITS.setdefault(tid, [])
        self._stack = stack
        stack.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        stack = self._stack
        if stack and stack[-1] is self:
            stack.pop()
        elif self in stack:
            stack.remove(self)

    def progress(self) -> None:
        """Something arrived: the wait counts again from now."""
        self.since = _now()

    def set_peers(self, peers: Iterable[int] | None) -> None:
        """The ranks still owed (e.g. the PS workers not yet done)."""
        self.peers = peers


def waiting(op: str, comm: Any = None, peers: Iterable[int] | None = None) -> Wait:
    """Declare a wait for ``op`` on ``peers`` (ranks of ``comm``) while the block runs."""
    return Wait(op, comm, peers)


def current_waits() -> dict[int, Wait]:
    """Each thread's innermost open wait (thread id -> wait)."""
    out = {}
    for tid, stack in list(_WAITS.copy().items()):
        try:
            out[tid] = stack[-1]
        except IndexError:
            continue
    alive = {t.ident for t in threading.enumerate()}
    for tid in [t for t in _WAITS if t not in alive]:
        _WAITS.pop(tid, None)   # a finished thread's (empty) list
    return out
