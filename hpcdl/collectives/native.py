"""The native algorithms: hand the whole buffer to the MPI library's own collective.

float16 and bfloat16 are upcast to float32 before MPI sees them (MPI has no
standard type for either; summing them as raw bytes or as FLOAT would be
wrong), reduced in float32, and rounded back once.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..comm.base import Communicator
from ..ops import ReduceOp, mpi_reducible

__all__ = ["native_allreduce", "native_reduce_scatter"]


def native_allreduce(comm: Communicator, buf: np.ndarray, op: ReduceOp) -> None:
    """In place; ``avg`` comes back as the sum (the caller divides)."""
    wide = mpi_reducible(buf.dtype)
    if wide == buf.dtype:
        comm.allreduce(buf, op)
        return
    tmp = buf.astype(wide)
    comm.allreduce(tmp, op)
    np.copyto(buf, tmp, casting="unsafe")


def native_reduce_scatter(comm: Communicator, sendbuf: np.ndarray, recvbuf: np.ndarray,
                          counts: Sequence[int], op: ReduceOp) -> None:
    wide = mpi_reducible(sendbuf.dtype)
    if wide == sendbuf.dtype:
        comm.reduce_scatter(sendbuf, recvbuf, counts, op)
        return
    out = np.empty(recvbuf.size, wide)
    comm.reduce_scatter(sendbuf.astype(wide), out, counts, op)
    np.copyto(recvbuf, out, casting="unsafe")
