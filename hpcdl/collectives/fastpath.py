"""The blocking allreduce of a NumPy array, with as little Python as possible.

Small allreduces are dominated by per-call overhead: the general path builds a
:class:`~hpcdl.buffers.Buffer`, parses arguments and wraps the work in
closures, which costs tens of microseconds where MPI needs a few. Most calls
in training are ``allreduce(numpy_array)`` on the default communicator, so
that case is served here from per-call-constant lookups cached in dicts.

:func:`try_allreduce` returns :data:`MISS` for anything unusual (another
array type, ``out=``, a pending async queue, debug mode, an argument error to
report): the general path in ``api.py`` then handles it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .. import runtime
from ..errors import CommError
from ..ops import SUPPORTED_DTYPES, ReduceOp, finish_avg, is_half
from . import registry
from .native import native_allreduce, native_allreduce_avg

__all__ = ["try_allreduce", "MISS"]

MISS = object()

_OPS: dict[str, ReduceOp] = {}
for _op in ReduceOp:
    _OPS[_op.value] = _OPS[_op.value.upper()] = _OPS[_op] = _op
_DTYPES = frozenset(SUPPORTED_DTYPES.values())
_INTS = frozenset(d for d in _DTYPES if d.kind == "i")

# os.environ.get costs ~1.5 us (it encodes the key and wraps a Mapping);
# reading CPython's underlying dict directly costs ~50 ns and still sees
# every change made through os.environ (monkeypatch.setenv included).
_ENV_DATA: dict | None = getattr(os.environ, "_data", None)
try:
    _DEBUG_KEY: Any = os.environ.encodekey("HPCDL_DEBUG")  # type: ignore[attr-defined]
except AttributeError:
    _ENV_DATA = None


def _debug() -> bool:
    if _ENV_DATA is None:
        value = os.environ.get("HPCDL_DEBUG", "0")
    else:
        raw = _ENV_DATA.get(_DEBUG_KEY)
        value = "0" if raw is None else os.environ.decodevalue(raw)  # type: ignore[attr-defined]
    return value not in ("", "0")


def _plan(comm: Any, dtype: np.dtype, op: ReduceOp) -> tuple[Any, Any, Any, Any] | None:
    """The constant arguments of the mpi4py call for ``(dtype, op)`` on ``comm`` (None:
    not MPI-reducible), cached on the communicator itself."""
    plans: dict | None = getattr(comm, "_hpcdl_plans", None)
    if plans is None:
        plans = comm._hpcdl_plans = {}
    key = (dtype, op)
    if key in plans:
        return plans[key]
    mpi = getattr(comm, "mpi", None)
    plan = None
    if mpi is not None and not is_half(dtype) and op is not ReduceOp.AVG:
        from mpi4py import MPI

        from ..comm.mpi import _MPI_OPS, mpi_datatype

        plan = (mpi, MPI.IN_PLACE, mpi_datatype(dtype), _MPI_OPS[op])
    plans[key] = plan
    return plan


def try_allreduce(tensor: np.ndarray, op: Any, algorithm: str, comm: Any) -> Any:
    """Blocking in-place allreduce of ``tensor`` (an ``np.ndarray``), or :data:`MISS`."""
    if comm is None:
        ctx = runtime._CONTEXT
        if ctx is None:
            return MISS
        comm = ctx.comm
    rop = _OPS.get(op) if isinstance(op, str) else None
    dtype = tensor.dtype
    flags = tensor.flags
    if (rop is None or dtype not in _DTYPES or not flags.c_contiguous or not flags.writeable
            or (rop is ReduceOp.AVG and dtype in _INTS)):
        return MISS  # the general path reports the error
    executor = comm.executor
    if (executor is not None and executor._pending) or _debug():
        return MISS
    size = comm.size
    if size == 1 or tensor.size == 0:
        # nothing to move, but an unknown algorithm name is still an error to report
        return tensor if algorithm == "auto" or algorithm in registry.ALLREDUCE else MISS
    if algorithm == "auto":
        algorithm = registry._chooser(comm, tensor.nbytes, dtype)
    if algorithm == "native":
        plan = _plan(comm, dtype, rop)
        if plan is not None:
            mpi, in_place, datatype, mpi_op = plan
            try:
                mpi.Allreduce(in_place, [tensor, datatype], mpi_op)
            except Exception as exc:  # an MPI error: report it like the general path does
                raise CommError(f"MPI error: {exc}", rank=comm.rank, size=size,
                                op="allreduce") from exc
            return tensor
    fn = registry.ALLREDUCE.get(algorithm)
    if fn is None:
        return MISS
    flat = tensor.reshape(-1)
    if rop is ReduceOp.AVG and fn is native_allreduce:
        native_allreduce_avg(comm, flat)  # divides before rounding half types
        return tensor
    fn(comm, flat, rop)
    if rop is ReduceOp.AVG:
        finish_avg(flat, size)
    return tensor
