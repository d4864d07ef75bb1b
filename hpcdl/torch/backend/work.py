"""torch ``Work`` objects over hpcdl's progress machinery.

Collectives: each call becomes one job on the communicator's FIFO progress
thread (:func:`hpcdl.collectives.handle.executor_for`, the same thread that
``hpcdl.allreduce(..., async_op=True)`` uses), so they start in the same order
on every rank, overlap with the caller (DDP's backward pass) and complete a
``torch.futures.Future``. The ``Work`` torch gets wraps that future:
``wait()`` blocks on it (re-raising the job's error), ``get_future()`` returns
it, and callbacks chained with ``then`` run when the job finishes.

Point-to-point: posted at once as MPI nonblocking requests on the caller's
thread (never queued behind collectives: a blocking send there could wait for
a receive that the peer posts only after a later collective). ``wait()`` tests
the request with a deadline; ``get_future()`` is completed by a poller thread
that tests (never blocks on) every outstanding request.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

import torch
import torch.distributed as dist
from mpi4py import MPI
from torch.futures import Future

from ...collectives.handle import executor_for
from ...comm.mpi import mpi_error
from ...errors import CommError, HpcdlError
from ...watchdog import waiting

__all__ = ["submit", "CollectiveWork", "P2PWork", "wait_timeout"]


def wait_timeout(group_s: float | None = None, call: Any = None) -> tuple[float, str]:
    """Seconds a ``wait()`` may take before it raises, and where that number came from:
    the call's ``timeout`` (a timedelta), else the group's (``init_process_group(timeout=)``
    / ``new_group(timeout=)``), else ``HPCDL_TORCH_TIMEOUT`` (default 1800)."""
    if call is not None and hasattr(call, "total_seconds") and call.total_seconds() > 0:
        return call.total_seconds(), "the wait's timeout"
    if group_s is not None and group_s > 0:
        return group_s, "the group's timeout (init_process_group/new_group timeout=)"
    return float(os.environ.get("HPCDL_TORCH_TIMEOUT", "1800")), "HPCDL_TORCH_TIMEOUT"


class _Failed:
    """What the source future carries when the job raised (Python cannot set a C++ error)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _unwrap(fut: Future) -> Any:
    # Raising inside a ``then`` callback is the one way Python code can complete a
    # torch future *with an error*: DDP's C++ side and chained callbacks see it.
    value = fut.value()
    if isinstance(value, _Failed):
        raise value.error
    return value


class CollectiveWork(dist.Work):
    """One queued collective: ``wait()`` re-raises its error with its own type."""

    def __init__(self, op: str, rank: int, mpi: Any = None,
                 timeout_s: float | None = None) -> None:
        super().__init__()
        self._op = op
        self._rank = rank
        self._mpi = mpi              # the group's mpi4py communicator (for the watchdog)
        self._timeout_s = timeout_s  # the group's timeout (None: HPCDL_TORCH_TIMEOUT)
        self._event = threading.Event()
        self._error: BaseException | None = None
        self._result: Any = None
        self._source: Future = Future()
        self._future = self._source.then(_unwrap)

    def _finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        self._event.set()
        self._source.set_result(_Failed(error) if error is not None else result)

    def is_completed(self) -> bool:
        return self._event.is_set()

    def is_success(self) -> bool:
        return self._event.is_set() and self._error is None

    def exception(self) -> BaseException | None:
        return self._error

    def wait(self, timeout: Any = None) -> bool:
        limit, source = wait_timeout(self._timeout_s, timeout)
        with waiting(f"torch {self._op}", self._mpi):
            done = self._event.wait(limit)
        if not done:
            raise CommError(f"not finished after {limit:g} s ({source})", rank=self._rank,
                            op=self._op)
        if self._error is not None:
            raise self._error
        return True

    def result(self) -> Any:
        self.wait()
        return self._result

    def get_future(self) -> Future:
        return self._future


def submit(comm: Any, op: str, job: Callable[[], Any],
           timeout_s: float | None = None) -> CollectiveWork:
    """Run ``job`` on ``comm``'s progress thread; its return value completes the work,
    whose ``wait()`` gives up after ``timeout_s`` (None: HPCDL_TORCH_TIMEOUT)."""
    work = CollectiveWork(op, comm.rank, comm.mpi, timeout_s)

    def run() -> None:
        try:
            result = job()
        except BaseException as exc:  # noqa: BLE001 - delivered through the work
            if isinstance(exc, MPI.Exception):   # a direct mpi4py call (ProcessFailed in FT mode)
                exc = mpi_error(exc, comm, op)
            elif not isinstance(exc, HpcdlError):
                exc = CommError(f"{type(exc).__name__}: {exc}", rank=comm.rank,
                                size=comm.size, op=op)
            work._finish(error=exc)
            return
        work._finish(result=result)

    executor_for(comm).submit(op, run)
    return work


class P2PWork(dist.Work):
    """A posted MPI send or receive; ``result()`` is the tensor list torch passed."""

    def __init__(self, req: MPI.Request, tensors: list[torch.Tensor], op: str, rank: int,
                 finish: Callable[[], None] | None = None, *, mpi: Any = None,
                 peer: int | None = None, timeout_s: float | None = None) -> None:
        super().__init__()
        self._req = req
        self._mpi, self._peer = mpi, peer   # whom it waits for (the watchdog's report)
        self._timeout_s = timeout_s         # the group's timeout (None: HPCDL_TORCH_TIMEOUT)
        self._tensors = tensors
        self._op = op
        self._rank = rank
        self._finish = finish  # copies a staged receive back to the device tensor
        self._done = False
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._future: Future | None = None

    def _complete(self) -> None:
        # Called once the request tested complete, by wait() or by the poller.
        with self._lock:
            if self._done:
                return
            self._done = True
        if self._finish is not None:
            self._finish()
        if self._future is not None:
            self._future.set_result(self._tensors)

    def is_completed(self) -> bool:
        try:
            if not self._done and self._req.Test():
                self._complete()
        except MPI.Exception as exc:
            # The peer died (FT mode) or MPI failed: the work is over, with an error that
            # wait() raises; the poller thread must not die of it (that aborts the job).
            self._fail(mpi_error(exc, self._mpi if self._mpi is not None else MPI.COMM_WORLD,
                                 self._op))
        return self._done

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            if self._done:
                return
            self._done, self._error = True, error
        if self._future is not None:
            self._future.set_exception(error)

    def wait(self, timeout: Any = None) -> bool:
        limit, source = wait_timeout(self._timeout_s, timeout)
        deadline = time.monotonic() + limit
        pause = 1e-6
        peers = None if self._peer is None else (self._peer,)
        with waiting(f"torch {self._op}", self._mpi, peers):
            while not self.is_completed():
                if time.monotonic() > deadline:
                    raise CommError(f"no matching operation of peer rank {self._peer} within "
                                    f"{limit:g} s ({source})", rank=self._rank, op=self._op)
                time.sleep(pause)
                pause = min(pause * 2, 1e-3)
        if self._error is not None:
            raise self._error
        return True

    def result(self) -> list[torch.Tensor]:
        return self._tensors

    def get_future(self) -> Future:
        with self._lock:
            if self._future is None:
                self._future = Future()
                if self._done:
                    if self._error is not None:
                        self._future.set_exception(self._error)
                    else:
                        self._future.set_result(self._tensors)
                    return self._future
                _POLLER.watch(self)
        return self._future


class _Poller:
    """One daemon thread that completes the futures of outstanding P2PWork objects."""

    def __init__(self) -> None:
        self._works: list[P2PWork] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, work: P2PWork) -> None:
        with self._cond:
            self._works.append(work)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="hpcdl-torch-p2p",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._works))
                works = list(self._works)
            done = [w for w in works if w.is_completed()]
            with self._cond:
                for w in done:
                    self._works.remove(w)
            if not done:
                time.sleep(2e-4)


_POLLER = _Poller()
