"""The MPI backend: a thin, typed wrapper over one mpi4py communicator.

Every MPI failure is re-raised as :class:`~hpcdl.errors.CommError` naming the
rank, the operation and MPI's own error string.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
from mpi4py import MPI

from .. import trace
from ..watchdog.waits import waiting
from ..buffers import Buffer
from .base import UNDEFINED
from ..errors import CommError, DtypeError
from ..ops import ReduceOp, dtype_name
from .base import CommState

__all__ = ["MPICommunicator", "mpi_datatype", "mpi_error", "MPI_OPS"]

#: The dtypes MPI reduces natively; float16/bfloat16 are upcast first (ops.mpi_reducible).
_REDUCIBLE = frozenset(np.dtype(t) for t in (np.float64, np.float32, np.int32, np.int64))
MPI_OPS = {ReduceOp.SUM: MPI.SUM, ReduceOp.AVG: MPI.SUM, ReduceOp.MIN: MPI.MIN,
            ReduceOp.MAX: MPI.MAX, ReduceOp.PROD: MPI.PROD}

F = TypeVar("F", bound=Callable[..., Any])


def mpi_datatype(dtype: np.dtype) -> MPI.Datatype:
    """The MPI datatype that *reduces* ``dtype``; float16/bfloat16 have none on purpose.

    mpi4py maps NumPy's type codes to MPI's predefined datatypes itself
    (``Datatype.fromcode``, what ``mpi4py.util.dtlib.from_numpy_dtype`` calls for an
    elementary dtype). dtlib's wrapper returns a ``Dup`` the caller must ``Free``,
    which costs two MPI calls per collective and hands the reduction a derived
    type instead of the predefined one, so the mapping is asked directly.
    """
    if dtype not in _REDUCIBLE:
        raise DtypeError(f"MPI cannot reduce {dtype_name(dtype)}; upcast it first "
                         "(hpcdl.ops.mpi_reducible)")
    return MPI.Datatype.fromcode(dtype.char)


def _memory(buf: Buffer) -> Any:
    """What mpi4py reads a device Buffer through: the caller's own object.

    mpi4py (>= 3.1) takes any object exposing ``__dlpack__`` or
    ``__cuda_array_interface__`` as a buffer and does no stream synchronisation
    of its own (DLPack ``stream=-1``; CAI's ``stream`` is ignored): hpcdl has
    already waited on the producer's ready event. torch refuses to export a
    tensor that requires grad, so its detached alias goes instead.
    """
    return buf.obj.detach() if buf.kind == "torch" else buf.obj


def _spec(buf: "np.ndarray | Buffer", reduce: bool = False) -> list:
    """``[memory, count, datatype]`` for mpi4py: typed for reductions, bytes otherwise."""
    if isinstance(buf, Buffer):
        if reduce:
            return [_memory(buf), buf.size, mpi_datatype(buf.dtype)]
        return [_memory(buf), buf.nbytes, MPI.BYTE]
    if reduce:
        return [buf, buf.size, mpi_datatype(buf.dtype)]
    return [buf.view(np.uint8) if buf.size else np.empty(0, np.uint8), buf.nbytes, MPI.BYTE]


def _nbytes(args: tuple) -> int:
    """Bytes of the first buffer argument (for the trace)."""
    first = args[0] if args else None
    return int(getattr(first, "nbytes", 0) or 0)


def mpi_error(exc: BaseException, comm: Any, op: str) -> CommError:
    """MPI's failure ``exc`` in ``op`` on ``comm`` as a CommError: rank, operation and MPI's
    own error string (the one conversion every MPI call of hpcdl goes through)."""
    text = exc.Get_error_string() if isinstance(exc, MPI.Exception) else str(exc)
    return CommError(f"MPI error: {text}", rank=comm.rank, size=comm.size, op=op)


def _mpi_errors(name: str) -> Callable[[F], F]:
    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(self: "MPICommunicator", *args: Any, **kwargs: Any) -> Any:
            t0 = trace.now() if trace.ON else 0
            try:
                return fn(self, *args, **kwargs)
            except MPI.Exception as exc:
                raise mpi_error(exc, self, name) from exc
            finally:
                if t0:
                    trace.record(name, "mpi", t0, trace.now(), bytes=_nbytes(args))
        return wrapper  # type: ignore[return-value]
    return deco


class _MPIRequest:
    __slots__ = ("req", "comm", "peer", "op")

    def __init__(self, req: MPI.Request, comm: "MPICommunicator", peer: int, op: str) -> None:
        self.req = req
        self.comm = comm
        self.peer = peer  # for the watchdog's report: whom this request waits for
        self.op = op

    def wait(self) -> None:
        try:
            with waiting(f"wait after {self.op}", self.comm.mpi, (self.peer,)):
                self.req.Wait()
        except MPI.Exception as exc:
            raise mpi_error(exc, self.comm, "wait") from exc

    def test(self) -> bool:
        return bool(self.req.Test())


class MPICommunicator(CommState):
    """hpcdl's view of an mpi4py communicator (usually a Dup of COMM_WORLD)."""

    def __init__(self, comm: MPI.Comm) -> None:
        self.mpi = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self._splits: dict[str, "MPICommunicator"] = {}
        # MPI attaches TAG_UB to COMM_WORLD; it holds for every communicator of the job
        self.tag_ub = int(MPI.COMM_WORLD.Get_attr(MPI.TAG_UB))

    def __repr__(self) -> str:
        return f"MPICommunicator(rank={self.rank}, size={self.size})"

    # point-to-point ------------------------------------------------------------
    @_mpi_errors("send")
    def send(self, buf: np.ndarray, dest: int, tag: int = 0) -> None:
        self.mpi.Send(_spec(buf), dest, tag)

    @_mpi_errors("recv")
    def recv(self, buf: np.ndarray, source: int, tag: int = 0) -> None:
        self.mpi.Recv(_spec(buf), source, tag)

    @_mpi_errors("sendrecv")
    def sendrecv(self, sendbuf: np.ndarray, dest: int, recvbuf: np.ndarray, source: int,
                 tag: int = 0) -> None:
        self.mpi.Sendrecv(_spec(sendbuf), dest, tag, _spec(recvbuf), source, tag)

    @_mpi_errors("isend")
    def isend(self, buf: np.ndarray, dest: int, tag: int = 0) -> _MPIRequest:
        return _MPIRequest(self.mpi.Isend(_spec(buf), dest, tag), self, dest, "isend")

    @_mpi_errors("irecv")
    def irecv(self, buf: np.ndarray, source: int, tag: int = 0) -> _MPIRequest:
        return _MPIRequest(self.mpi.Irecv(_spec(buf), source, tag), self, source, "irecv")

    @_mpi_errors("waitall")
    def waitall(self, requests: Sequence[_MPIRequest]) -> None:
        with waiting("waitall", self.mpi, [r.peer for r in requests]):
            MPI.Request.Waitall([r.req for r in requests])

    # collectives ---------------------------------------------------------------
    @_mpi_errors("allreduce")
    def allreduce(self, buf: "np.ndarray | Buffer", op: ReduceOp) -> None:
        self.mpi.Allreduce(MPI.IN_PLACE, _spec(buf, reduce=True), MPI_OPS[op])

    @_mpi_errors("broadcast")
    def bcast(self, buf: "np.ndarray | Buffer", root: int) -> None:
        self.mpi.Bcast(_spec(buf), root)

    @_mpi_errors("allgather")
    def allgather(self, sendbuf: "np.ndarray | Buffer", recvbuf: "np.ndarray | Buffer") -> None:
        recv = _spec(recvbuf)
        recv[1] //= self.size  # MPI's receive count is per rank, not the total
        self.mpi.Allgather(_spec(sendbuf), recv)

    @_mpi_errors("reduce_scatter")
    def reduce_scatter(self, sendbuf: np.ndarray, recvbuf: np.ndarray, counts: Sequence[int],
                       op: ReduceOp) -> None:
        dt = mpi_datatype(sendbuf.dtype)
        self.mpi.Reduce_scatter([sendbuf, sendbuf.size, dt], [recvbuf, recvbuf.size, dt],
                                list(counts), MPI_OPS[op])

    @_mpi_errors("barrier")
    def barrier(self) -> None:
        self.mpi.Barrier()

    @_mpi_errors("allgather_object")
    def allgather_object(self, obj: Any) -> list[Any]:
        return self.mpi.allgather(obj)

    @_mpi_errors("broadcast_object")
    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        return self.mpi.bcast(obj, root)

    # groups ------------------------------------------------------------------
    @_mpi_errors("split")
    def split(self, color: int, key: int, *,
              name: str | None = None) -> "MPICommunicator | None":
        """Collective. With ``name`` the result is cached under it: every rank must pass
        the same ``name`` for the same grouping, so that all ranks hit the cache or
        all call MPI_Comm_split (a cache keyed on the local color would let one rank
        skip the collective while the others wait in it). A rank whose color is
        :data:`~hpcdl.comm.base.UNDEFINED` gets ``None`` (MPI gives it COMM_NULL)."""
        if name is not None and name in self._splits:
            return self._splits[name]
        if self.executor is not None:  # MPI_Comm_split must follow the queued collectives
            self.executor.quiesce()
        new = self.mpi.Split(MPI.UNDEFINED if color == UNDEFINED else color, key)
        sub = None if new == MPI.COMM_NULL else MPICommunicator(new)
        if sub is not None:
            sub.cuda_aware = self.cuda_aware
        if name is not None:
            self._splits[name] = sub
        return sub

    def check_thread_support(self) -> None:
        """Raise unless MPI lets a second thread call it (hpcdl's async progress thread).

        hpcdl serialises its own calls (a blocking call first drains the queue),
        so ``MPI_THREAD_SERIALIZED`` is the least it needs.
        """
        level = MPI.Query_thread()
        if level < MPI.THREAD_SERIALIZED:
            names = {MPI.THREAD_SINGLE: "MPI_THREAD_SINGLE",
                     MPI.THREAD_FUNNELED: "MPI_THREAD_FUNNELED"}
            raise CommError(f"async_op=True runs collectives on a progress thread, but MPI "
                            f"was initialised with {names.get(level, level)}; initialise it "
                            "with MPI_THREAD_SERIALIZED or MPI_THREAD_MULTIPLE (mpi4py's "
                            "default; check mpi4py.rc.thread_level)", rank=self.rank,
                            size=self.size, op="async_op")
