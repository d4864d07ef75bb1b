"""Ring allreduce: reduce-scatter then allgather around a ring, chunked and pipelined.

The buffer is cut into ``n`` blocks (the first ``count % n`` one element
longer). In the reduce-scatter phase, at step ``s`` every rank sends block
``rank - s`` to its right neighbour and reduces block ``rank - s - 1`` arriving
from its left one; after ``n - 1`` steps rank ``r`` holds the full reduction of
block ``r + 1``. The allgather phase passes the finished blocks around the
ring, ``n - 1`` more steps, straight into the caller's buffer.

Each rank sends and receives ``2 (n - 1) / n`` of the buffer: the least any
allreduce can (bandwidth-optimal). Cost ``2 (n - 1) (alpha + beta N / n)``
plus ``(n - 1) / n`` reductions of ``N`` bytes.

Pipelining: every block travels as chunks of ``CHUNK_BYTES``. All receives of a
step are posted one step ahead (two scratch blocks alternate), and chunk ``c``
is forwarded to the right as soon as it has been reduced, so the neighbour's
next step starts while this rank still reduces the rest of the block.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..comm.base import Communicator, internal_tag
from ..ops import ReduceOp, reduce_into
from .blocks import CHUNK_BYTES, block_bounds
from .scratch import scratch

__all__ = ["ring_allreduce", "ring_reduce_scatter", "ring_allgather", "block_bounds",
           "CHUNK_BYTES"]

# One reserved tag per phase (comm/base.py): chunks between two neighbours are
# matched in the order they were sent and the receives posted (MPI's
# non-overtaking rule), so the tag need not tell them apart.
_TAG_RS = 0   # reduce-scatter: internal_tag(comm, 0)
_TAG_AG = 1   # allgather


def _chunks(lo: int, hi: int, step: int) -> list[tuple[int, int]]:
    return [(a, min(a + step, hi)) for a in range(lo, hi, step)]


def ring_reduce_scatter(comm: Communicator, buf: np.ndarray, op: ReduceOp,
                        bounds: list[int], chunk: int) -> int:
    """Reduce in place so that block ``(rank + 1) % n`` of ``buf`` holds the full result.

    Returns the index of that block. Other blocks hold partial sums afterwards.
    """
    n, rank = comm.size, comm.rank
    left, right = (rank - 1) % n, (rank + 1) % n
    width = max(bounds[i + 1] - bounds[i] for i in range(n))
    halves = (scratch(comm, width, buf.dtype, "ring:a"), scratch(comm, width, buf.dtype, "ring:b"))
    tag = internal_tag(comm, _TAG_RS)

    def post_recvs(step: int) -> list[Any]:
        blk = (rank - step - 1) % n
        into = halves[step % 2]
        lo = bounds[blk]
        return [comm.irecv(into[a - lo:b - lo], left, tag)
                for a, b in _chunks(lo, bounds[blk + 1], chunk)]

    first = rank % n
    sends = [comm.isend(buf[a:b], right, tag)
             for a, b in _chunks(bounds[first], bounds[first + 1], chunk)]
    recvs = post_recvs(0)
    for step in range(n - 1):
        last = step == n - 2
        upcoming = [] if last else post_recvs(step + 1)
        blk = (rank - step - 1) % n
        lo = bounds[blk]
        into = halves[step % 2]
        for i, (a, b) in enumerate(_chunks(lo, bounds[blk + 1], chunk)):
            recvs[i].wait()
            reduce_into(buf[a:b], into[a - lo:b - lo], op)
            if not last:  # forward at once: the right neighbour's next step starts now
                sends.append(comm.isend(buf[a:b], right, tag))
        recvs = upcoming
    comm.waitall(sends)
    return (rank + 1) % n


def ring_allgather(comm: Communicator, buf: np.ndarray, owned: int, bounds: list[int],
                   chunk: int) -> None:
    """Block ``owned`` of ``buf`` is final here (and block ``owned - 1`` at the left
    neighbour, and so on): pass every block around so all ranks hold all of them."""
    n, rank = comm.size, comm.rank
    left, right = (rank - 1) % n, (rank + 1) % n
    tag = internal_tag(comm, _TAG_AG)
    recvs: list[list[Any]] = []
    for step in range(n - 1):  # every block arrives exactly once: post all receives now
        blk = (owned - step - 1) % n
        recvs.append([comm.irecv(buf[a:b], left, tag)
                      for a, b in _chunks(bounds[blk], bounds[blk + 1], chunk)])
    sends = [comm.isend(buf[a:b], right, tag)
             for a, b in _chunks(bounds[owned], bounds[owned + 1], chunk)]
    for step in range(n - 1):
        blk = (owned - step - 1) % n
        for i, (a, b) in enumerate(_chunks(bounds[blk], bounds[blk + 1], chunk)):
            recvs[step][i].wait()
            if step < n - 2:
                sends.append(comm.isend(buf[a:b], right, tag))
    comm.waitall(sends)


def ring_allreduce(comm: Communicator, buf: np.ndarray, op: ReduceOp) -> None:
    """In place over ``comm``; ``avg`` is reduced as a sum (the caller divides)."""
    n = comm.size
    if n == 1 or buf.size == 0:
        return
    bounds = block_bounds(buf.size, n)
    chunk = max(1, CHUNK_BYTES // buf.dtype.itemsize)
    owned = ring_reduce_scatter(comm, buf, op, bounds, chunk)
    ring_allgather(comm, buf, owned, bounds, chunk)
