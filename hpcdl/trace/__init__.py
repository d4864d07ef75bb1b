"""Where time goes: a Chrome-trace timeline of every rank.

    HPCDL_TRACE=out/trace hpcdl launch -n 4 -- python train.py   # or hpcdl.init(trace=DIR)
    hpcdl trace merge out/trace -o trace.json                     # open in Perfetto / chrome://tracing
    hpcdl trace summary trace.json                                # time per rank and phase

Each rank appends complete events (``ph: "X"``, microseconds, ``pid`` = rank,
``tid`` = one lane per phase) to ``DIR/rank<r>.jsonl``, flushed every
:data:`~hpcdl.trace.recorder.FLUSH_EVENTS` events or
:data:`~hpcdl.trace.recorder.FLUSH_SECONDS`, and at exit: memory stays bounded
and a rank killed mid-run leaves a readable file up to its last flush. At
start the ranks measure their clock offsets to rank 0 by ping-pong, and
``merge`` puts every rank on rank 0's clock.

Lanes: ``queue`` (an async op waiting for the progress thread), ``collective``
(the whole operation, with bytes, algorithm, communicator and sequence
number), ``mpi`` (each MPI call: native collectives, point-to-point),
``staging`` (host copies of device buffers), ``compression``, ``optimizer``
(DistributedOptimizer: hooks, bucket packing, waiting in ``synchronize``).

Off (the default) costs one module-attribute test on the general paths and on
the cached fast path of a blocking NumPy allreduce, which is bypassed while
tracing so that every call is recorded. This package imports nothing of
hpcdl's above :mod:`hpcdl.errors`: every layer may record into it.
"""

from __future__ import annotations

import weakref
from typing import Any

from .clock import LANES, now
from .recorder import Recorder

__all__ = ["ON", "start", "stop", "record", "now", "active_dir", "comm_label", "LANES"]

#: True while a trace is being recorded (read by the instrumented paths).
ON = False
_recorder: Any = None
_LABELS: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def start(directory: str, comm: Any, *, clock_skew_ns: int = 0) -> None:
    """Start recording into ``directory`` (collective over ``comm``: it measures clock offsets).

    ``clock_skew_ns``: for tests only, this rank's clock is taken to run that far
    ahead of the real one (see :class:`~hpcdl.trace.recorder.Recorder`)."""
    global ON, _recorder
    if _recorder is not None:
        return
    _recorder = Recorder(directory, comm, clock_skew_ns)
    ON = True


def stop() -> None:
    """Flush and stop recording (also runs at exit)."""
    global ON, _recorder
    ON = False
    if _recorder is not None:
        _recorder.close()
        _recorder = None


def active_dir() -> str | None:
    return None if _recorder is None else _recorder.directory


def record(name: str, lane: str, t0: int, t1: int, **args: Any) -> None:
    """One complete event from ``t0`` to ``t1`` (``now()`` nanoseconds) on ``lane``."""
    rec = _recorder
    if rec is not None:
        rec.add(name, lane, t0, t1, args)


def comm_label(comm: Any) -> str:
    """A name for ``comm`` that is the same on every member rank: MPI's own name, else
    its members' ranks in ``MPI_COMM_WORLD`` (cached per communicator)."""
    label = _LABELS.get(comm)
    if label is None:
        label = _LABELS[comm] = _label(comm)
    return label


def _label(comm: Any) -> str:
    mpi = getattr(comm, "mpi", None)
    if mpi is None:
        return f"size {comm.size}"
    try:
        from mpi4py import MPI

        name = mpi.Get_name()
        if name:
            return name
        world = MPI.Group.Translate_ranks(mpi.Get_group(), list(range(comm.size)),
                                          MPI.COMM_WORLD.Get_group())
        return "ranks " + ",".join(map(str, world)) if comm.size <= 8 else \
            f"ranks {world[0]}..{world[-1]} ({comm.size})"
    except Exception:  # noqa: BLE001 - a name is a courtesy
        return f"size {comm.size}"
