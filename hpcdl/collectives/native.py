"""The native algorithms: hand the whole buffer to the MPI library's own collective.

float16 and bfloat16 are upcast to float32 before MPI sees them (MPI has no
standard type for either; summing them as raw bytes or as FLOAT would be
wrong), reduced in float32, and rounded back once. For ``avg`` the division
happens in float32 too, before that rounding: a sum of float16 values can
overflow where their mean does not ("divide first to avoid FP16 overflow").
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..comm.base import Communicator
from ..ops import ReduceOp, finish_avg, mpi_reducible

__all__ = ["native_allreduce", "native_allreduce_avg", "native_reduce_scatter"]


def _allreduce(comm: Communicator, buf: np.ndarray, op: ReduceOp, average: bool) -> None:
    wide = mpi_reducible(buf.dtype)
    tmp = buf if wide == buf.dtype else buf.astype(wide)
    comm.allreduce(tmp, op)
    if average:
        finish_avg(tmp, comm.size)
    if tmp is not buf:
        np.copyto(buf, tmp, casting="unsafe")


def native_allreduce(comm: Communicator, buf: np.ndarray, op: ReduceOp) -> None:
    """In place; ``avg`` comes back as the sum (the caller divides)."""
    _allreduce(comm, buf, op, average=False)


def native_allreduce_avg(comm: Communicator, buf: np.ndarray) -> None:
    """In place, the finished mean: summed and divided in the MPI-reducible dtype."""
    _allreduce(comm, buf, ReduceOp.SUM, average=True)


def native_reduce_scatter(comm: Communicator, sendbuf: np.ndarray, recvbuf: np.ndarray,
                          counts: Sequence[int], op: ReduceOp) -> None:
    """``recvbuf`` gets this rank's block; unlike the allreduce algorithms, ``avg``
    comes back finished (divided before the half types are rounded)."""
    wide = mpi_reducible(sendbuf.dtype)
    out = recvbuf if wide == sendbuf.dtype else np.empty(recvbuf.size, wide)
    comm.reduce_scatter(sendbuf.astype(wide, copy=False), out, counts, op)
    if op is ReduceOp.AVG:
        finish_avg(out, comm.size)
    if out is not recvbuf:
        np.copyto(recvbuf, out, casting="unsafe")
