"""How a flat buffer is cut: into one block per rank, and into pipeline pieces.

Every algorithm that splits a buffer over ranks (``reduce_scatter``, ring,
hierarchical, the Horovod adapter's row split) uses :func:`block_counts`, so
they all agree on who owns which elements; every algorithm that moves a buffer
in pieces (ring, chunked, and the cost model that predicts them) uses
:data:`CHUNK_BYTES`.
"""

from __future__ import annotations

from itertools import accumulate

# CHUNK_BYTES is defined in hpcdl.ops, the bottom layer, so that the cost model
# (hpcdl.tuning, below the collectives) reads the same number.
from ..ops import CHUNK_BYTES

__all__ = ["CHUNK_BYTES", "block_bounds", "block_counts"]


def block_counts(count: int, size: int) -> list[int]:
    """How ``count`` elements split over ``size`` ranks.

    Like ``numpy.array_split``: the first ``count % size`` ranks get one extra.
    """
    base, extra = divmod(count, size)
    return [base + (1 if r < extra else 0) for r in range(size)]


def block_bounds(count: int, size: int) -> list[int]:
    """The ``size + 1`` offsets of those blocks: block ``r`` is ``[bounds[r], bounds[r + 1])``."""
    return [0, *accumulate(block_counts(count, size))]
