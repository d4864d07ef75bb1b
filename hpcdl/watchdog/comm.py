"""The one hook: an ``MPI.Intracomm`` subclass that counts the operations started on it.

Every hpcdl collective and point-to-point call ends in a method of the mpi4py
communicator an :class:`~hpcdl.comm.mpi.MPICommunicator` holds (``comm.mpi``),
including the fast path of ``hpcdl.allreduce`` (its cached plan holds
that same object). With the watchdog on, ``hpcdl.init()`` wraps its ``Dup`` of
``COMM_WORLD`` in :class:`WatchedComm`; ``Split``/``Split_type``/``Dup`` of a
watched communicator return watched ones, so node, cross-node and
``hpcdl.subgroup`` communicators are watched too. Nothing in
``hpcdl/collectives`` changes, and with the watchdog off nothing is wrapped.

What a method records is the least the monitor thread (monitor.py) needs: a
per-communicator sequence number and the operation's name (and peer, for
point-to-point). Whether an operation is still running, and for how long, the
monitor learns by sampling the threads' stacks (a thread whose innermost frame
is one of these methods is inside MPI), so the hot path reads no clock. Cost:
one Python call and two slot stores, ~0.1 us (measured in
docs/fault-tolerance.md).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable

from mpi4py import MPI

__all__ = ["WatchedComm", "watch", "watched_comms", "WATCHED_CODES", "world_ranks"]

_BASE = MPI.Intracomm
_Allreduce = _BASE.Allreduce
_SUM = MPI.SUM
_ANY = MPI.ANY_SOURCE

# Weak references (mpi4py communicators are unhashable, so no WeakSet).
_ALL: "list[weakref.ref]" = []
_ALL_LOCK = threading.Lock()


def _collective(name: str) -> Callable[..., Any]:
    base = getattr(_BASE, name)

    def method(self: "WatchedComm", *args: Any, **kwargs: Any) -> Any:
        self.wd_seq += 1
        self.wd_op = name
        return base(self, *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    return method


def _p2p(name: str, peer_at: tuple[int, ...], peer_kw: tuple[str, ...]) -> Callable[..., Any]:
    """A point-to-point method; ``peer_at``/``peer_kw`` locate dest/source in its arguments."""
    base = getattr(_BASE, name)

    def method(self: "WatchedComm", *args: Any, **kwargs: Any) -> Any:
        self.wd_p2p += 1
        self.wd_op = name
        self.wd_peer = tuple(args[i] if i < len(args) else kwargs.get(k, _ANY)
                             for i, k in zip(peer_at, peer_kw))
        return base(self, *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    return method


def _derived(name: str) -> Callable[..., Any]:
    base = getattr(_BASE, name)

    def method(self: "WatchedComm", *args: Any, **kwargs: Any) -> Any:
        self.wd_seq += 1
        self.wd_op = name
        return watch(base(self, *args, **kwargs))

    method.__name__ = method.__qualname__ = name
    return method


class WatchedComm(MPI.Intracomm):
    """An ``MPI.Intracomm`` (same handle) whose operations the watchdog can see."""

    # Slots, not instance-dict entries: on this Cython-type subclass a dict store costs
    # ~0.1 us and a slot store ~0.02 us, and the hot path makes two per call (measured
    # with timeit on a 1-rank Allreduce: +0.25 us with dict entries, +0.09 us with slots).
    # "__dict__" stays for anything else a caller hangs on a communicator.
    __slots__ = ("wd_seq", "wd_p2p", "wd_op", "wd_peer", "wd_origin", "__dict__")
    wd_seq: int    # collectives started on this communicator (the sequence number)
    wd_p2p: int    # point-to-point calls started
    wd_op: str     # name of the last operation started
    wd_peer: tuple  # dest/source of the last point-to-point call
    wd_origin: Any  # the communicator object that owns the handle (kept alive)

    def Allreduce(self, sendbuf: Any, recvbuf: Any, op: MPI.Op = _SUM) -> None:  # noqa: N802
        # Written out (not made by _collective): this is the 4 KiB allreduce hot path,
        # and *args/**kwargs packing would cost another ~0.1 us.
        self.wd_seq += 1
        self.wd_op = "Allreduce"
        _Allreduce(self, sendbuf, recvbuf, op)

    for _name in ("Bcast", "Allgather", "Allgatherv", "Reduce_scatter",
                  "Reduce_scatter_block", "Reduce", "Gather", "Gatherv", "Scatter", "Scatterv",
                  "Alltoall", "Alltoallv", "Barrier", "Scan", "Exscan", "allgather", "bcast",
                  "allreduce", "gather", "scatter", "alltoall", "barrier", "reduce"):
        locals()[_name] = _collective(_name)
    for _name, _at, _kw in (("Send", (1,), ("dest",)), ("Ssend", (1,), ("dest",)),
                            ("Recv", (1,), ("source",)), ("send", (1,), ("dest",)),
                            ("recv", (1,), ("source",)),
                            ("Sendrecv", (1, 4), ("dest", "source")),
                            ("Isend", (1,), ("dest",)), ("Irecv", (1,), ("source",))):
        locals()[_name] = _p2p(_name, _at, _kw)
    for _name in ("Split", "Split_type", "Dup", "Create", "Create_group"):
        locals()[_name] = _derived(_name)
    del _name, _at, _kw


def watch(comm: Any) -> Any:
    """``comm`` as a :class:`WatchedComm` (same MPI handle), registered with the monitor."""
    if comm is None or comm == MPI.COMM_NULL:
        return comm
    if isinstance(comm, WatchedComm):
        if hasattr(comm, "wd_seq"):
            return comm
        # mpi4py's Dup/Split/Create_group of a WatchedComm return a new WatchedComm
        # (type(self)) with its slots empty: fill them and register it.
        w = comm
    else:
        w = WatchedComm(comm)
    w.wd_seq = w.wd_p2p = 0
    w.wd_op = "(none yet)"
    w.wd_peer = ()
    w.wd_origin = comm  # keep the object that owns the handle alive beside its view
    with _ALL_LOCK:
        _ALL[:] = [r for r in _ALL if r() is not None]
        _ALL.append(weakref.ref(w))
    return w


def watched_comms() -> list[WatchedComm]:
    with _ALL_LOCK:
        alive = [r() for r in _ALL]
    return [c for c in alive if c is not None and c != MPI.COMM_NULL]


def world_ranks(comm: MPI.Comm) -> tuple[int, ...]:
    """The ``COMM_WORLD`` ranks of ``comm``'s members (a local call: no communication)."""
    group, world = comm.Get_group(), MPI.COMM_WORLD.Get_group()
    try:
        members = list(range(group.Get_size()))
        return tuple(int(r) for r in MPI.Group.Translate_ranks(group, members, world))
    finally:
        group.Free()
        world.Free()


def _codes() -> frozenset:
    # hpcdl's other waits (request waits, polling loops) declare themselves instead
    # (watchdog/waits.py): they carry what they wait for, which a frame does not.
    return frozenset(f.__code__ for f in vars(WatchedComm).values() if hasattr(f, "__code__"))


WATCHED_CODES = _codes()
