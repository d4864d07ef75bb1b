"""``async_op=True``: a handle, and one progress thread per communicator.

MPI requires every rank to start collectives on a communicator in the same
order. All asynchronous operations on a communicator therefore run on one
thread, first in first out, and a blocking call first waits for that queue to
drain, then runs on the caller's thread (no hand-off cost for the common
blocking case). mpi4py and NumPy release the GIL while they work, so the
progress thread overlaps with the caller's computation (the backward pass).
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import weakref
from typing import Any, Callable

__all__ = ["Handle", "Executor", "executor_for", "drain", "close_all", "CLOSE_TIMEOUT_S"]

#: How long closing a communicator's progress thread (at exit) waits for its queue.
CLOSE_TIMEOUT_S = 10.0


class Handle:
    """The future of an asynchronous collective: ``wait()`` returns its result."""

    __slots__ = ("_event", "_result", "_error", "op")

    def __init__(self, op: str) -> None:
        self.op = op
        self._event = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None

    def _finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        self._event.set()

    def test(self) -> bool:
        """True once the operation has finished (successfully or not)."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> Any:
        """Block until done; return the result buffer or raise the operation's error."""
        if not self._event.wait(timeout):
            raise TimeoutError(f"{self.op} did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result

    def __repr__(self) -> str:
        return f"<hpcdl.Handle {self.op} {'done' if self.test() else 'pending'}>"


class Executor:
    """A daemon thread that runs one communicator's async operations in order."""

    def __init__(self, name: str) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition()
        self.closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        _ALL.add(self)

    @property
    def pending(self) -> int:
        """Operations submitted and not yet finished (0: the queue is idle). A snapshot:
        another thread may submit right after; the caller's own submissions are counted."""
        return self._pending

    def submit(self, op: str, fn: Callable[[], Any]) -> Handle:
        handle = Handle(op)
        with self._idle:
            self._pending += 1
        self._queue.put((fn, handle))
        return handle

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, handle = item
            try:
                handle._finish(result=fn())
            except BaseException as exc:  # noqa: BLE001 - delivered by Handle.wait()
                handle._finish(error=exc)
            with self._idle:
                self._pending -= 1
                if self._pending == 0:
                    self._idle.notify_all()

    def quiesce(self) -> None:
        """:meth:`drain`, unless called from the progress thread itself (where the queue
        is already in order): what every collective started outside the queue does first."""
        if threading.current_thread() is not self._thread:
            self.drain()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every submitted operation has finished; False if ``timeout`` ran out."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Finish the queue, then stop the thread (idempotent).

        At most ``timeout`` seconds in all: an operation stuck in MPI (a peer
        that never joined) must not turn the exit into a hang. The thread is a
        daemon, so giving up on it lets the process end; a line on stderr says
        what was still running.
        """
        if self.closed:
            return
        self.closed = True
        deadline = time.monotonic() + timeout
        drained = self.drain(timeout)
        self._queue.put(None)
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if not drained or self._thread.is_alive():
            sys.stderr.write(f"hpcdl: {self._thread.name}: {self._pending} asynchronous "
                             f"operation(s) still running after {timeout:g} s at close; "
                             "not waiting for them (a peer rank may have stopped)\n")
        _ALL.discard(self)


_CREATE = threading.Lock()
# Every live executor, so that exit can finish them all (not only the default
# communicator's): a progress thread still inside MPI when MPI_Finalize runs
# crashes the process.
_ALL: "weakref.WeakSet[Executor]" = weakref.WeakSet()


def executor_for(comm: Any) -> Executor:
    ex = comm.executor
    if ex is None or ex.closed:
        # A second thread calling MPI needs the library's consent: refuse before starting it.
        check = getattr(comm, "check_thread_support", None)
        if check is not None:
            check()
        with _CREATE:
            ex = comm.executor
            if ex is None or ex.closed:
                ex = comm.executor = Executor(f"hpcdl-progress-rank{comm.rank}")
    return ex


def close_all() -> None:
    """Let every communicator's queued operations finish and stop the threads (at exit)."""
    for ex in list(_ALL):
        ex.close()


def drain(comm: Any) -> None:
    """Let the operations already queued on ``comm`` finish before a blocking one starts."""
    ex = comm.executor
    if ex is not None:
        ex.quiesce()
