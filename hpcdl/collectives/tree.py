"""Tree allreduce (recursive doubling): latency-optimal for small messages.

With ``p`` a power of two, ``log2 p`` rounds: in round ``k`` every rank swaps
its whole partial result with the rank whose number differs in bit ``k`` and
reduces. Cost ``log2(p) (alpha + beta N)`` plus ``log2(p)`` reductions: fewest
messages of any algorithm, but the whole buffer crosses every round, so it
loses to the ring once ``beta N`` outweighs ``alpha``.

Other rank counts (MPICH's scheme): with ``p`` the largest power of two
``<= n`` and ``rem = n - p``, the first ``2 rem`` ranks pair up before the
rounds: each even one hands its data to the odd one above it and sits out,
receiving the result afterwards. Two extra ``alpha + beta N`` steps on those
ranks.

Every rank ends with bitwise the same result: each round adds the same two
operands (floating-point ``a + b == b + a``).
"""

from __future__ import annotations

import numpy as np

from ..comm.base import Communicator, internal_tag
from ..ops import ReduceOp, reduce_into
from .scratch import scratch

__all__ = ["tree_allreduce"]

# reserved tags 2, 3, 4 (comm/base.py): fold-in, fold-out, the exchange rounds
_FOLD_IN, _FOLD_OUT, _ROUND = 2, 3, 4


def tree_allreduce(comm: Communicator, buf: np.ndarray, op: ReduceOp) -> None:
    """In place over ``comm``; ``avg`` is reduced as a sum (the caller divides)."""
    n, rank = comm.size, comm.rank
    if n == 1 or buf.size == 0:
        return
    tmp = scratch(comm, buf.size, buf.dtype, "tree")
    fold_in, fold_out, rounds = (internal_tag(comm, k) for k in (_FOLD_IN, _FOLD_OUT, _ROUND))
    p = 1 << (n.bit_length() - 1)
    rem = n - p
    # Fold the first 2*rem ranks in pairs so that p ranks remain.
    if rank < 2 * rem:
        if rank % 2 == 0:
            comm.send(buf, rank + 1, fold_in)
            comm.recv(buf, rank + 1, fold_out)
            return
        comm.recv(tmp, rank - 1, fold_in)
        reduce_into(buf, tmp, op)
        vrank = rank // 2
    else:
        vrank = rank - rem
    mask = 1
    while mask < p:
        vpeer = vrank ^ mask
        peer = vpeer * 2 + 1 if vpeer < rem else vpeer + rem
        comm.sendrecv(buf, peer, tmp, peer, rounds)
        reduce_into(buf, tmp, op)
        mask <<= 1
    if rank < 2 * rem:
        comm.send(buf, rank - 1, fold_out)
