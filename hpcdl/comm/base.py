"""The Communicator protocol: everything an algorithm may ask of a group of ranks.

Algorithms (``hpcdl.collectives``) are pure functions of ``(comm, buffer, op)``
and use only what is listed here, so the same ring or tree runs over real MPI
(:class:`~hpcdl.comm.mpi.MPICommunicator`) and over the in-process fake
(:class:`~hpcdl.comm.fake.FakeCommunicator`) used by unit tests. Point-to-point
is part of the protocol for the algorithms built on it (ring, tree,
hierarchical, Horovod's Adasum). The parameter server (:mod:`hpcdl.ps`) and
the pipeline stages (through the torch backend) do not use it: they talk to
mpi4py directly on a communicator of their own (``MPICommunicator.mpi``),
because they need what this protocol leaves out (matched probes for messages
of unknown source and size in the parameter server, receives from any source
in the torch backend). Buffers are flat,
C-contiguous NumPy arrays (or, for the CUDA-aware MPI backend, device
:class:`~hpcdl.buffers.Buffer` objects, which mpi4py reads through DLPack or
``__cuda_array_interface__``).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from ..ops import ReduceOp

__all__ = ["Communicator", "CommState", "Request", "internal_tag", "GUARANTEED_TAG_UB",
           "RESERVED_TAGS", "UNDEFINED"]

#: The largest tag every MPI must accept (the standard guarantees ``MPI_TAG_UB >= 32767``).
GUARANTEED_TAG_UB = 32767
#: hpcdl's algorithms use the top ``RESERVED_TAGS`` tags, ``tag_ub - RESERVED_TAGS + 1 ..
#: tag_ub``; users have every tag below. One tag per phase is enough: MPI's
#: non-overtaking rule matches messages between two ranks on one tag in order.
RESERVED_TAGS = 8
#: The ``split`` color of a rank that joins no new communicator (it gets ``None``): the
#: role of ``MPI_UNDEFINED``. Its value is Open MPI's; the MPI backend passes the
#: library's own ``MPI.UNDEFINED`` (MPICH's differs), so this module needs no mpi4py.
UNDEFINED = -32766


def internal_tag(comm: Any, k: int) -> int:
    """hpcdl's ``k``-th reserved tag on ``comm`` (``0 <= k < RESERVED_TAGS``), within its TAG_UB."""
    assert 0 <= k < RESERVED_TAGS
    return int(getattr(comm, "tag_ub", GUARANTEED_TAG_UB)) - k


class CommState:
    """What hpcdl keeps on a communicator, declared in one place.

    Each attribute belongs to one module, which alone sets it; the class-level
    ``None``/``False`` mean "not made yet" (each is per communicator: splits
    start afresh, except ``cuda_aware``, which a split copies from its parent).
    """

    #: collectives/handle.py: the async progress thread, made on the first ``async_op``
    executor: Any = None
    #: runtime.init() from its probe: MPI takes device pointers on this communicator
    cuda_aware: bool = False
    #: collectives/fastpath.py: ``(generation, {(dtype, op, algorithm, nbytes): plan})``
    _hpcdl_fast: tuple[int, dict] | None = None
    #: collectives/scratch.py: reusable host arrays by slot name
    _hpcdl_scratch: dict[str, np.ndarray] | None = None
    #: comm/nodes.py (the one owner; runtime.init() attaches the default one): node layout
    _hpcdl_nodes: Any = None
    #: collectives/online.py: what ``auto`` learned online on this communicator
    _hpcdl_tuner: Any = None
    #: collectives/staging.py: ``{(backend, device): (d2h stream, h2d stream)}``
    _staging_streams: dict[Any, tuple[Any, Any]] | None = None


@runtime_checkable
class Request(Protocol):
    def wait(self) -> None: ...
    def test(self) -> bool: ...


@runtime_checkable
class Communicator(Protocol):
    rank: int
    size: int
    tag_ub: int  # largest valid tag (MPI_TAG_UB); hpcdl reserves the top RESERVED_TAGS

    # point-to-point (tags 0 .. tag_ub - RESERVED_TAGS are the user's)
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

    # groups: ranks with ``color == UNDEFINED`` take part in the collective and get None
    def split(self, color: int, key: int, *,
              name: str | None = None) -> "Communicator | None": ...
