"""Adasum over MPI: Horovod's recursive vector halving with the Adasum combination.

For two gradients ``a`` and ``b`` Adasum is

    adasum(a, b) = (1 - a.b / (2 |a|^2)) a + (1 - a.b / (2 |b|^2)) b

(the sum when they are orthogonal, the average when they are equal). Over
``p = 2^k`` ranks it is applied as a binary tree, computed like Horovod's
``AdasumMPI``: at level ``d = 1, 2, 4, ...`` rank ``r`` pairs with ``r ^ d``,
the pair swaps halves of the current segment (vector halving, distance
doubling), and the three dot products of the combination are summed over the
``2d`` ranks that together hold the two vectors. After ``k`` levels each rank
holds ``1/p`` of the result; an allgather in the reverse order rebuilds it.

Rank counts that are not a power of two: the ``n - p`` extra ranks first hand
their vector to rank ``r - p``, which combines the two with the formula above,
and get the result back at the end (Horovod requires a power of two here).
Dot products run in float64; the vector keeps its dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...errors import DtypeError

__all__ = ["adasum_", "combine"]

_TAG = 11


def combine(a: np.ndarray, b: np.ndarray, dots: np.ndarray) -> np.ndarray:
    """Adasum of the full vectors whose pieces are ``a`` and ``b``; ``dots`` = [a.b, a.a, b.b]."""
    ab, aa, bb = dots
    ca = 1.0 - ab / (2.0 * aa) if aa > 0 else 1.0
    cb = 1.0 - ab / (2.0 * bb) if bb > 0 else 1.0
    return (ca * a + cb * b).astype(a.dtype, copy=False)


def _local_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.array([a64 @ b64, a64 @ a64, b64 @ b64])


def adasum_(tensor: torch.Tensor, comm: Any) -> torch.Tensor:
    """Replace ``tensor`` (contiguous, floating) with the Adasum of its values on all ranks."""
    if not tensor.dtype.is_floating_point:
        raise DtypeError(f"Adasum needs a floating tensor, got {tensor.dtype}", rank=comm.rank,
                         size=comm.size, op="allreduce(op=Adasum)")
    n, r = comm.size, comm.rank
    if n == 1 or tensor.numel() == 0:
        return tensor
    compute = torch.float32 if tensor.dtype in (torch.float16, torch.bfloat16) else tensor.dtype
    x = tensor.detach().reshape(-1).to("cpu", compute).numpy().copy()
    p = 1 << (n.bit_length() - 1)
    if r >= p:                       # an extra rank: hand over, wait for the result
        comm.send(x, r - p, tag=_TAG)
        comm.recv(x, r - p, tag=_TAG)
    else:
        if r + p < n:
            other = np.empty_like(x)
            comm.recv(other, r + p, tag=_TAG)
            x = combine(x, other, _local_dots(x, other))
        x = _halving(x, comm, r, p)
        if r + p < n:
            comm.send(x, r + p, tag=_TAG)
    with torch.no_grad():
        tensor.copy_(torch.from_numpy(x).view(tensor.shape).to(tensor.dtype))
    return tensor


def _halving(x: np.ndarray, comm: Any, r: int, p: int) -> np.ndarray:
    """The power-of-two part: reduce-scatter by vector halving, then allgather back."""
    lo, hi = 0, x.size
    segments = []
    d = 1
    while d < p:
        partner = r ^ d
        mid = lo + (hi - lo) // 2
        keep = (lo, mid) if r & d == 0 else (mid, hi)
        give = (mid, hi) if r & d == 0 else (lo, mid)
        theirs = np.empty(keep[1] - keep[0], x.dtype)
        comm.sendrecv(np.ascontiguousarray(x[give[0]:give[1]]), partner, theirs, partner,
                      tag=_TAG)
        mine = x[keep[0]:keep[1]]
        # 'a' is the lower half-group's vector, 'b' the upper's, on every rank alike.
        a, b = (mine, theirs) if r & d == 0 else (theirs, mine)
        dots = _group_sum(_local_dots(a, b), comm, r, d)
        x[keep[0]:keep[1]] = combine(a, b, dots)
        segments.append((lo, hi, give))
        lo, hi = keep
        d <<= 1
    # Reverse: each level's partner holds the other half of the segment.
    while segments:
        d >>= 1
        seg_lo, seg_hi, give = segments.pop()
        partner = r ^ d
        recv = np.empty(give[1] - give[0], x.dtype)
        comm.sendrecv(np.ascontiguousarray(x[lo:hi]), partner, recv, partner, tag=_TAG + 1)
        x[give[0]:give[1]] = recv
        lo, hi = seg_lo, seg_hi
    return x


def _group_sum(v: np.ndarray, comm: Any, r: int, d: int) -> np.ndarray:
    """Sum ``v`` over the ``2d`` ranks sharing ``r // (2d)`` (recursive doubling)."""
    total = v.copy()
    step = 1
    while step < 2 * d:
        got = np.empty_like(total)
        comm.sendrecv(total, r ^ step, got, r ^ step, tag=_TAG + 2)
        total += got
        step <<= 1
    return total
