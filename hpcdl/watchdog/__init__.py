"""The watchdog: a stalled collective or point-to-point call ends the job, naming who is late.

    hpcdl launch -n 4 -- python train.py                       # on: 600 s
    HPCDL_TIMEOUT=120 hpcdl launch -n 4 -- python train.py     # or hpcdl.init(timeout=120)
    HPCDL_TIMEOUT=0 hpcdl launch -n 4 -- python train.py       # off

On by default with NCCL's default timeout, 10 minutes: a mismatched collective
or a rank stuck outside hpcdl otherwise hangs the job until its wall-time limit,
silently. 600 s is far above a legitimate wait (a first step, a checkpoint, an
evaluation: those that take longer say so with ``long_phase``), and the cost is
a counter per MPI call and a thread that wakes once a second (measured in
docs/fault-tolerance.md). ``HPCDL_TIMEOUT=0`` (or ``init(timeout=0)``) turns it
off: exactly the code path of before (no wrapper, no thread). With MPI
initialised below ``MPI_THREAD_MULTIPLE`` the default is off (the monitor
thread makes MPI calls); asking for a timeout there is an error. When on, an
operation that has waited ``timeout`` seconds ends the job with ``MPI_Abort``
(exit status 124) after a report on stderr such as::

    [hpcdl rank 0/4] watchdog: Allreduce #9 on the communicator of world ranks 0..3
    has waited 5.0 s (timeout 5 s, HPCDL_TIMEOUT); ranks that have not arrived: 2
      rank 2: last started Allreduce #8 on it; inside no MPI call or hpcdl wait; main
      thread at stall.py:14 in main

A wait that is not an MPI call on a watched communicator (a polling loop, a
request's wait) declares itself, so the watchdog sees it too::

    with hpcdl.watchdog.waiting("ps.push_pull", comm, peers):   # peers: ranks of comm
        ...

How it works: :mod:`hpcdl.watchdog.comm` (the hook: a counting view of the
mpi4py communicator), :mod:`hpcdl.watchdog.waits` (declared waits),
:mod:`hpcdl.watchdog.monitor` (the per-rank thread) and
:mod:`hpcdl.watchdog.report` (who holds a stall up).
"""

from __future__ import annotations

import atexit
import os
from typing import Any

from ..errors import InvalidArgumentError, MismatchError
from .comm import WatchedComm, watch
from .monitor import Monitor
from .waits import Wait, waiting

__all__ = ["DEFAULT_TIMEOUT_S", "resolve_timeout", "watch", "start", "stop", "active",
           "WatchedComm", "waiting", "Wait"]

_MONITOR: Monitor | None = None

DEFAULT_TIMEOUT_S = 600.0
"""The timeout when neither ``init(timeout=)`` nor ``HPCDL_TIMEOUT`` says (NCCL's default)."""


def resolve_timeout(timeout: float | None, rank: int | None = None) -> float:
    """The watchdog timeout in seconds: ``timeout`` if given, else ``HPCDL_TIMEOUT``, else
    :data:`DEFAULT_TIMEOUT_S` (0 when MPI lacks ``MPI_THREAD_MULTIPLE``); 0 = off."""
    source = "timeout"
    if timeout is None:
        raw = os.environ.get("HPCDL_TIMEOUT", "").strip()
        if raw == "":
            from mpi4py import MPI

            # Not asked for: where the monitor thread cannot run, stay off (start() would
            # refuse, and a default must not make a working job fail).
            multiple = MPI.Is_initialized() and MPI.Query_thread() >= MPI.THREAD_MULTIPLE
            return DEFAULT_TIMEOUT_S if multiple else 0.0
        source = "HPCDL_TIMEOUT"
        try:
            timeout = float(raw)
        except ValueError:
            raise InvalidArgumentError(f"HPCDL_TIMEOUT={raw!r} is not a number of seconds "
                                       "(0 turns the watchdog off)", rank=rank,
                                       op="init") from None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0 \
            or timeout != timeout:
        raise InvalidArgumentError(f"{source}={timeout!r}: use seconds >= 0 (0 turns the "
                                   "watchdog off)", rank=rank, op="init")
    return float(timeout)


def agree(comm: Any, timeout: float) -> None:
    """Collective on the mpi4py ``comm``: every rank must watch with the same timeout.

    The watchdog's own communicator is created collectively, so ranks that
    disagree would otherwise hang in ``init()``.
    """
    everyone = comm.allgather(timeout)
    if len(set(everyone)) > 1:
        detail = ", ".join(f"rank {r}: {t:g}" for r, t in enumerate(everyone))
        raise MismatchError(f"ranks disagree on the watchdog timeout ({detail}); set "
                            "HPCDL_TIMEOUT (or init(timeout=)) the same everywhere",
                            rank=comm.Get_rank(), size=comm.Get_size(), op="init")


def start(timeout: float) -> Monitor:
    """Collective over ``COMM_WORLD``: start this rank's monitor thread (by ``init()``)."""
    global _MONITOR
    from mpi4py import MPI

    if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
        raise InvalidArgumentError("the watchdog's thread makes MPI calls, which needs "
                                   "MPI_THREAD_MULTIPLE; this MPI was initialised at a lower "
                                   "level (set mpi4py.rc.thread_level = 'multiple', or set "
                                   "HPCDL_TIMEOUT=0)", rank=MPI.COMM_WORLD.Get_rank(), op="init")
    if _MONITOR is not None:
        return _MONITOR
    _MONITOR = Monitor(timeout, MPI.COMM_WORLD.Dup())
    _MONITOR.start()
    atexit.register(stop)   # runs before runtime's shutdown and before MPI_Finalize
    return _MONITOR


def stop() -> None:
    """Stop the monitor thread (idempotent; at exit)."""
    global _MONITOR
    if _MONITOR is not None:
        _MONITOR.stop()
        _MONITOR = None


def active() -> float:
    """The timeout being watched, 0.0 when the watchdog is off."""
    return _MONITOR.timeout if _MONITOR is not None else 0.0
