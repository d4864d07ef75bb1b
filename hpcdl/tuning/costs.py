"""The cost of each allreduce algorithm as a function of ranks and bytes.

Every algorithm's time is linear in three machine parameters (Hockney's model
extended with a reduction term, as in Thakur, Rabenseifner and Gropp,
"Optimization of collective communication operations in MPICH", IJHPCA 2005):

    T = a * alpha + b * beta + c * gamma

``alpha`` is the latency of one message (s), ``beta`` the transfer time per
byte (s/B, 1 / bandwidth), ``gamma`` the time to reduce one byte (s/B). The
coefficients ``(a, b, c)`` depend only on the algorithm, the rank count ``p``
and the message size ``n`` (bytes); :func:`coefficients` gives them for hpcdl's
algorithms, as those algorithms are implemented:

=============  =====================================  ===========================  ==================
algorithm      a (messages on the critical path)       b (bytes sent, per rank)     c (bytes reduced)
=============  =====================================  ===========================  ==================
ring           2 (p-1) ceil(n / (p C))                 2 (p-1)/p n                  (p-1)/p n
tree           k + 2 f                                 (k + 2 f) n                  (k + f) n
native         2 k + 2 f                               2 (q-1)/q n + 2 f n          (q-1)/q n + f n
chunked        ceil(n / C) (2 k + 2 f)                 as native                    as native
=============  =====================================  ===========================  ==================

with ``q`` the largest power of two <= p, ``k = log2 q`` and ``f = 1`` when
``p != q`` (the extra ranks fold into a partner before and after; 0
otherwise), ``C`` the chunk size (1 MiB). ``tree`` is recursive doubling (the
whole buffer every step); ``native`` is modelled as Rabenseifner's
reduce-scatter + allgather by recursive halving and doubling, which is what
Open MPI and MPICH run for large messages (for small ones they switch to
recursive doubling: the per-algorithm fit of alpha absorbs that difference at
the rank counts measured); ``chunked`` calls native once per 1 MiB piece.

Across nodes (:func:`cluster_cost`) each message pays the parameters of the
link it crosses, and a step in which all ``L`` ranks of a node send across the
network at once shares the node's link (``L`` times the bytes). The
hierarchical algorithm is a ring reduce-scatter inside the node, a cross-node
allreduce of ``n / L`` bytes by each local rank, and a ring allgather inside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..ops import CHUNK_BYTES

__all__ = ["Params", "ALGORITHMS", "FLAT", "CHUNK_BYTES", "coefficients", "cost",
           "cluster_cost"]

# CHUNK_BYTES: the pipeline / piece size of ``ring`` and ``chunked``, re-exported.
FLAT = ("native", "chunked", "ring", "tree")
ALGORITHMS = FLAT + ("hierarchical",)


@dataclass(frozen=True)
class Params:
    """alpha (s per message), beta (s per byte moved), gamma (s per byte reduced).

    Real nodes have caches: a message that fits moves (and is reduced) faster
    than one that streams from memory. ``beta_cached``/``gamma_cached``, when
    set, apply to messages of at most ``cache_bytes``; ``beta``/``gamma`` to
    larger ones.
    """

    alpha: float
    beta: float
    gamma: float
    beta_cached: float | None = None
    gamma_cached: float | None = None
    cache_bytes: float = 0.0
    #: Extra seconds per message per unit of oversubscription (ranks per core - 1): with
    #: more busy-polling ranks than cores, a message waits for its receiver to be
    #: scheduled. 0 on a node with a core per rank, the case projected to clusters.
    alpha_oversub: float = 0.0

    def beta_at(self, n: float) -> float:
        return self.beta_cached if self.beta_cached is not None and n <= self.cache_bytes \
            else self.beta

    def gamma_at(self, n: float) -> float:
        return self.gamma_cached if self.gamma_cached is not None and n <= self.cache_bytes \
            else self.gamma

    def time(self, a: float, b: float, c: float, n: float = float("inf")) -> float:
        """Seconds for coefficients ``(a, b, c)`` of an ``n``-byte message."""
        return a * self.alpha + b * self.beta_at(n) + c * self.gamma_at(n)


def _fold(p: int) -> tuple[int, int, int]:
    """(q, k, f): the largest power of two q <= p, k = log2 q, f = 1 if p != q."""
    q = 1 << (p.bit_length() - 1)
    return q, q.bit_length() - 1, int(p != q)


def coefficients(algorithm: str, p: int, n: float,
                 chunk: int = CHUNK_BYTES) -> tuple[float, float, float]:
    """``(a, b, c)`` of ``algorithm`` on ``p`` ranks of one level for ``n`` bytes."""
    if p < 1 or n < 0:
        raise ValueError(f"coefficients: need p >= 1 and n >= 0, got p={p}, n={n}")
    if p == 1 or n == 0:
        return 0.0, 0.0, 0.0
    q, k, f = _fold(p)
    if algorithm == "ring":
        per_step = max(1, math.ceil(n / p / chunk))
        return 2 * (p - 1) * per_step, 2 * (p - 1) / p * n, (p - 1) / p * n
    if algorithm == "tree":
        return k + 2 * f, (k + 2 * f) * n, (k + f) * n
    if algorithm in ("native", "chunked"):
        a = 2 * k + 2 * f
        b = 2 * (q - 1) / q * n + 2 * f * n
        c = (q - 1) / q * n + f * n
        if algorithm == "chunked":
            a *= max(1, math.ceil(n / chunk))
        return a, b, c
    raise ValueError(f"coefficients: no single-level model for algorithm {algorithm!r} "
                     f"(one of {', '.join(FLAT)})")


def cost(algorithm: str, p: int, n: float, params: Params) -> float:
    """Seconds for one allreduce of ``n`` bytes over ``p`` ranks sharing one link type."""
    return params.time(*coefficients(algorithm, p, n), n=n)


def _rd_steps(p: int, per_node: int) -> tuple[int, int]:
    """Recursive-doubling steps (intra, inter) when ranks fill nodes of ``per_node``
    in order: partners at distance < per_node share a node."""
    _, k, _ = _fold(p)
    intra = min(k, max(0, per_node.bit_length() - 1))
    return intra, k - intra


def cluster_cost(algorithm: str, p: int, n: float, per_node: int, intra: Params,
                 inter: Params) -> float:
    """Seconds for an allreduce of ``n`` bytes over ``p`` ranks, ``per_node`` per node.

    ``intra`` holds the node's shared-memory parameters, ``inter`` the
    network's (per node: ``inter.beta`` is 1 / the node's injection bandwidth).
    """
    per_node = max(1, min(per_node, p))
    nodes = math.ceil(p / per_node)
    if nodes == 1:
        return cost(algorithm if algorithm != "hierarchical" else "ring", p, n, intra)
    if algorithm == "hierarchical":
        # ring reduce-scatter inside the node (half the ring's messages and bytes, all of
        # its reduction), the cross-node allreduce of one shard, ring allgather inside
        a, b, c = coefficients("ring", per_node, n)
        inside = intra.time(a / 2, b / 2, c, n) + intra.time(a / 2, b / 2, 0.0, n)
        # every local rank crosses with its shard at once: the node link carries them all
        shared = Params(inter.alpha, inter.beta * per_node, intra.gamma_at(n))
        shard = n / per_node
        cross = min(cost("ring", nodes, shard, shared), cost("native", nodes, shard, shared))
        return inside + cross
    if algorithm == "ring":
        # one link of each node crosses the network per step: the slowest link sets the pace
        return inter.time(*coefficients("ring", p, n), n=n)
    q, k, f = _fold(p)
    intra_steps, inter_steps = _rd_steps(p, per_node)
    if algorithm == "tree":
        # the far (inter-node) steps: all per_node ranks of a node send the whole buffer at once
        g = intra.gamma_at(n)
        far = inter_steps * (inter.alpha + n * inter.beta * per_node + n * g)
        near = intra_steps * (intra.alpha + n * intra.beta_at(n) + n * g)
        fold = 2 * f * (inter.alpha + n * inter.beta) + f * n * g
        return far + near + fold
    if algorithm in ("native", "chunked"):
        # recursive halving: the far steps come first and carry the largest halves
        far_bytes = sum(n / 2 ** (s + 1) for s in range(inter_steps))
        near_bytes = sum(n / 2 ** (s + 1) for s in range(inter_steps, k))
        t = 2 * (inter_steps * inter.alpha + far_bytes * inter.beta * per_node
                 + intra_steps * intra.alpha + near_bytes * intra.beta_at(n))
        t += (far_bytes + near_bytes) * intra.gamma_at(n)
        t += f * (2 * inter.alpha + 2 * n * inter.beta + n * intra.gamma_at(n))
        if algorithm == "chunked":
            pieces = max(1, math.ceil(n / CHUNK_BYTES))
            t += (pieces - 1) * 2 * (k + f) * inter.alpha
        return t
    raise ValueError(f"cluster_cost: unknown algorithm {algorithm!r} (one of {', '.join(ALGORITHMS)})")
