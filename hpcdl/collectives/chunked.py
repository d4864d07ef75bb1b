"""Segmented native allreduce: the library's own ``MPI_Allreduce``, one 1 MiB piece at a time.

Why a loop of native calls beats one native call on large messages: Open MPI's
large-message path streams the whole buffer through temporary buffers of the
same size, so from a few MiB on its working set falls out of the caches and it
runs at memory speed, twice over. On 1 MiB pieces each call's working set stays
in cache. Measured on the 2-core CI machine (busbw, native vs 1 MiB pieces):
16 MiB 3.8 -> 6.4 GB/s at 2 ranks, 2.0 -> 3.4 GB/s at 4 ranks; 64 MiB
1.9 -> 6.8 GB/s at 2 ranks, 1.0 -> 3.2 GB/s at 4 ranks (docs/algorithms.md).

Cost: ``ceil(N / C)`` native allreduces of ``C`` bytes, so ``ceil(N / C)`` times
the library's latency term on top of its bandwidth term: it only pays for
messages of several chunks, which is where ``auto`` uses it. float16/bfloat16
are upcast chunk by chunk (a 1 MiB float32 temporary instead of one the size
of the message).
"""

from __future__ import annotations

import numpy as np

from ..comm.base import Communicator
from ..ops import ReduceOp
from .blocks import CHUNK_BYTES
from .native import native_allreduce

__all__ = ["chunked_allreduce", "CHUNK_BYTES"]



def chunked_allreduce(comm: Communicator, buf: np.ndarray, op: ReduceOp) -> None:
    """In place over ``comm``; ``avg`` is reduced as a sum (the caller divides)."""
    step = max(1, CHUNK_BYTES // buf.dtype.itemsize)
    for start in range(0, buf.size, step):
        native_allreduce(comm, buf[start:start + step], op)
