"""The Communicator protocol: everything an algorithm may ask of a group of ranks.

Algorithms (``hpcdl.collectives``) are pure functions of ``(comm, buffer, op)``
and use only what is listed here, so the same ring or tree runs over real MPI
(:class:`~hpcdl.comm.mpi.MPICommunicator`) and over the in-process fake
(:class:`~hpcdl.comm.fake.FakeCommunicator`) used by unit tests. Point-to-point
is part of the protocol because the parameter server and pipeline stages need
it too. Buffers are flat, C-contiguous NumPy arrays (or, for the CUDA-aware MPI
backend, device :class:`~hpcdl.buffers.Buffer` objects).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from ..ops import ReduceOp

__all__ = ["Communicator", "Request"]


@runtime_checkable
class Request(Protocol):
    def wait(self) -> None: ...
    def test(self) -> bool: ...


@runtime_checkable
class Communicator(Protocol):
    rank: int
    size: int

    # point-to-point (tags < 2**15 are the user's; hpcdl algorithms use higher ones)
    def send(self, buf: np.ndarray, dest: int, tag: int = 0) -> None: ...
    def recv(self, buf: np.ndarray, source: int, tag: int = 0) -> None: ...
    def sendrecv(self, sendbuf: np.ndarray, dest: int, recvbuf: np.ndarray, source: int,
                 tag: int = 0) -> None: ...
    def isend(self, buf: np.ndarray, dest: int, tag: int = 0) -> Request: ...
    def irecv(self, buf: np.ndarray, source: int, tag: int = 0) -> Request: ...
    def waitall(self, requests: Sequence[Request]) -> None: ...

    # native collectives, in place where it makes sense; reductions take
    # MPI-reducible dtypes only (float64/32, int32/64: see ops.mpi_reducible)
    def allreduce(self, buf: np.ndarray, op: ReduceOp) -> None: ...
    def bcast(self, buf: np.ndarray, root: int) -> None: ...
    def allgather(self, sendbuf: np.ndarray, recvbuf: np.ndarray) -> None: ...
    def reduce_scatter(self, sendbuf: np.ndarray, recvbuf: np.ndarray,
                       counts: Sequence[int], op: ReduceOp) -> None: ...
    def barrier(self) -> None: ...

    # Python objects (metadata, debug checks, optimizer state)
    def allgather_object(self, obj: Any) -> list[Any]: ...
    def bcast_object(self, obj: Any, root: int = 0) -> Any: ...

    # groups
    def split(self, color: int, key: int, *, name: str | None = None) -> "Communicator": ...
    def abort(self, code: int = 1) -> None: ...
