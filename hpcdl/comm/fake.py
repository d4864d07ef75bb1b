"""An in-process communicator: N ranks as N threads of one Python process.

For unit tests of algorithms without mpiexec, and for debugging one with a
plain debugger. Sends are buffered (a copy goes into the destination's
mailbox), so an algorithm that would deadlock on MPI's rendezvous protocol may
pass here: tests under real mpiexec remain the proof. Every blocking wait has
a timeout, so a wrong algorithm fails the test instead of hanging it.

    results = run_ranks(3, lambda comm: ring_allreduce(comm, data[comm.rank], ReduceOp.SUM))
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import CommError
from .base import GUARANTEED_TAG_UB, UNDEFINED, CommState
from ..ops import ReduceOp, reduce_into

__all__ = ["FakeCommunicator", "run_ranks"]


class _World:
    def __init__(self, size: int, timeout: float) -> None:
        self.size = size
        self.timeout = timeout
        self.lock = threading.Lock()
        self.mailboxes: dict[tuple[int, int, int], queue.Queue] = {}
        self.slots: list[Any] = [None] * size
        self.barrier = threading.Barrier(size, timeout=timeout)
        self.subworlds: dict[tuple[int, int], "_World"] = {}

    def mailbox(self, src: int, dst: int, tag: int) -> queue.Queue:
        with self.lock:
            return self.mailboxes.setdefault((src, dst, tag), queue.Queue())


class _Done:
    def wait(self) -> None:
        return None

    def test(self) -> bool:
        return True


class _PendingRecv:
    def __init__(self, comm: "FakeCommunicator", buf: np.ndarray, source: int, tag: int) -> None:
        self.args = (comm, buf, source, tag)
        self.done = False

    def wait(self) -> None:
        if not self.done:
            comm, buf, source, tag = self.args
            comm.recv(buf, source, tag)
            self.done = True

    def test(self) -> bool:
        comm, _, source, tag = self.args
        if not self.done and not comm.world.mailbox(source, comm.rank, tag).empty():
            self.wait()
        return self.done


class FakeCommunicator(CommState):
    def __init__(self, world: _World, rank: int) -> None:
        self.world = world
        self.rank = rank
        self.size = world.size
        self._nsplits = 0
        self._named: dict[str, "FakeCommunicator | None"] = {}
        self.tag_ub = GUARANTEED_TAG_UB  # the least any MPI offers: what code may rely on

    def __repr__(self) -> str:
        return f"FakeCommunicator(rank={self.rank}, size={self.size})"

    def _fail(self, op: str, msg: str) -> CommError:
        return CommError(msg, rank=self.rank, size=self.size, op=op)

    # point-to-point --------------------------------------------------------
    def _check_tag(self, op: str, tag: int) -> None:
        # what MPI_ERR_TAG would say: code that passes here runs on any conforming MPI
        if not 0 <= tag <= self.tag_ub:
            raise self._fail(op, f"tag {tag} is outside 0..{self.tag_ub} (MPI_TAG_UB)")

    def send(self, buf: np.ndarray, dest: int, tag: int = 0) -> None:
        self._check_tag("send", tag)
        self.world.mailbox(self.rank, dest, tag).put(np.array(buf, copy=True))

    def recv(self, buf: np.ndarray, source: int, tag: int = 0) -> None:
        self._check_tag("recv", tag)
        try:
            data = self.world.mailbox(source, self.rank, tag).get(timeout=self.world.timeout)
        except queue.Empty:
            raise self._fail("recv", f"nothing arrived from rank {source} (tag {tag}) within "
                                     f"{self.world.timeout} s") from None
        if data.nbytes != buf.nbytes:
            raise self._fail("recv", f"message of {data.nbytes} bytes from rank {source} does "
                                     f"not fit a buffer of {buf.nbytes} bytes")
        np.copyto(buf.reshape(-1).view(np.uint8), data.reshape(-1).view(np.uint8))

    def sendrecv(self, sendbuf: np.ndarray, dest: int, recvbuf: np.ndarray, source: int,
                 tag: int = 0) -> None:
        self.send(sendbuf, dest, tag)
        self.recv(recvbuf, source, tag)

    def isend(self, buf: np.ndarray, dest: int, tag: int = 0) -> _Done:
        self.send(buf, dest, tag)
        return _Done()

    def irecv(self, buf: np.ndarray, source: int, tag: int = 0) -> _PendingRecv:
        self._check_tag("irecv", tag)
        return _PendingRecv(self, buf, source, tag)

    def waitall(self, requests: Sequence[Any]) -> None:
        for r in requests:
            r.wait()

    # collectives: every rank deposits, all read, then all leave --------------
    def _exchange(self, obj: Any) -> list[Any]:
        w = self.world
        try:
            w.slots[self.rank] = obj
            w.barrier.wait()
            values = list(w.slots)
            w.barrier.wait()
        except threading.BrokenBarrierError:
            raise self._fail("collective", "another rank failed or timed out") from None
        return values

    def allreduce(self, buf: np.ndarray, op: ReduceOp) -> None:
        values = self._exchange(buf.copy())
        acc = values[0].copy()
        for v in values[1:]:
            reduce_into(acc, v, op)
        np.copyto(buf, acc)

    def bcast(self, buf: np.ndarray, root: int) -> None:
        values = self._exchange(buf.copy() if self.rank == root else None)
        np.copyto(buf, values[root])

    def allgather(self, sendbuf: np.ndarray, recvbuf: np.ndarray) -> None:
        values = self._exchange(sendbuf.copy())
        np.copyto(recvbuf.reshape(self.size, -1), np.stack([v.reshape(-1) for v in values]))

    def reduce_scatter(self, sendbuf: np.ndarray, recvbuf: np.ndarray, counts: Sequence[int],
                       op: ReduceOp) -> None:
        values = self._exchange(sendbuf.copy())
        acc = values[0].copy()
        for v in values[1:]:
            reduce_into(acc, v, op)
        start = int(sum(counts[: self.rank]))
        np.copyto(recvbuf, acc[start:start + counts[self.rank]])

    def barrier(self) -> None:
        self._exchange(None)

    def allgather_object(self, obj: Any) -> list[Any]:
        return self._exchange(obj)

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        return self._exchange(obj if self.rank == root else None)[root]

    def split(self, color: int, key: int, *,
              name: str | None = None) -> "FakeCommunicator | None":
        if name is not None and name in self._named:
            return self._named[name]
        if color < 0 and color != UNDEFINED:  # what MPI_ERR_ARG would say
            raise self._fail("split", f"color {color} is negative and not UNDEFINED")
        if self.executor is not None:  # like MPI: the split follows the queued collectives
            self.executor.quiesce()
        pairs = self._exchange((color, key))
        if color == UNDEFINED:  # took part in the collective, joins no group (COMM_NULL)
            self._nsplits += 1
            if name is not None:
                self._named[name] = None  # type: ignore[assignment]
            return None
        members = sorted((k, r) for r, (c, k) in enumerate(pairs) if c == color)
        seq = self._nsplits
        self._nsplits += 1
        with self.world.lock:
            sub = self.world.subworlds.get((seq, color))
            if sub is None:
                sub = self.world.subworlds[(seq, color)] = _World(len(members), self.world.timeout)
        comm = FakeCommunicator(sub, [r for _, r in members].index(self.rank))
        if name is not None:
            self._named[name] = comm
        return comm


def run_ranks(size: int, fn: Callable[[FakeCommunicator], Any], timeout: float = 30.0) -> list[Any]:
    """Run ``fn(comm)`` on ``size`` threads; return their results in rank order.

    The first exception raised by any rank is re-raised here (after the others
    are released from their barriers), so a failing algorithm fails the test.
    """
    world = _World(size, timeout)
    results: list[Any] = [None] * size
    errors: list[BaseException | None] = [None] * size

    def body(rank: int) -> None:
        try:
            results[rank] = fn(FakeCommunicator(world, rank))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            errors[rank] = exc
            world.barrier.abort()

    threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    first = next((e for e in errors if e is not None and not isinstance(e, CommError)), None)
    first = first or next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    if any(t.is_alive() for t in threads):
        raise CommError(f"a rank did not finish within {timeout} s", op="run_ranks")
    return results
