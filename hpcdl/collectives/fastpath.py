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

from typing import Any

import numpy as np
from mpi4py import MPI

from .. import context, trace
from ..comm.mpi import MPI_OPS, mpi_datatype, mpi_error
from ..errors import InvalidArgumentError
from ..ops import SUPPORTED_DTYPES, ReduceOp, is_half
from . import catalog, online, registry
from .debug import debug_enabled
from .native import native_allreduce

__all__ = ["try_allreduce", "MISS"]

MISS = object()
_IN_PLACE = MPI.IN_PLACE

_OPS: dict[str, ReduceOp] = {}
for _op in ReduceOp:
    _OPS[_op.value] = _OPS[_op.value.upper()] = _OPS[_op] = _op
_DTYPES = frozenset(SUPPORTED_DTYPES.values())
_INTS = frozenset(d for d in _DTYPES if d.kind == "i")

_NOTHING = "nothing"  # plan: size 1 or zero elements, nothing to move
_PLAN_LIMIT = 4096    # distinct (dtype, op, algorithm, size) keys kept per communicator


def _make_plan(comm: Any, dtype: np.dtype, op: Any, algorithm: str, nbytes: int) -> Any:
    """What a valid call with these per-call constants does, or :data:`MISS` for
    anything the general path must see (it reports the errors)."""
    rop = _OPS.get(op) if isinstance(op, str) else None
    if rop is None or dtype not in _DTYPES or (rop is ReduceOp.AVG and dtype in _INTS):
        return MISS
    if algorithm != "auto" and algorithm not in registry.ALLREDUCE:
        return MISS
    if comm.size == 1 or nbytes == 0:
        return _NOTHING
    try:
        _, fn = registry.resolve_allreduce(algorithm, comm, nbytes, dtype)
    except InvalidArgumentError:  # e.g. a chooser naming no algorithm: the general path says so
        return MISS
    if fn is registry.tuned_allreduce:
        return _Tuned()
    mpi = getattr(comm, "mpi", None)
    if fn is native_allreduce and mpi is not None and not is_half(dtype) \
            and rop is not ReduceOp.AVG:
        return (mpi, mpi_datatype(dtype), MPI_OPS[rop], None, rop)
    return (None, None, None, fn, rop)


def try_allreduce(tensor: np.ndarray, op: Any, algorithm: str, comm: Any) -> Any:
    """Blocking in-place allreduce of ``tensor`` (an ``np.ndarray``), or :data:`MISS`.

    Everything that depends only on (dtype, op, algorithm, size) is decided once
    and cached on the communicator as a plan; a repeated call costs a dict lookup
    and the MPI call (about 1 us of Python in all: see docs/benchmarks.md).
    """
    if trace.ON:  # the general path records every call (a cached plan would bypass it)
        return MISS
    if comm is None:
        comm = context.get_context().comm
    flags = tensor.flags
    if not (flags.c_contiguous and flags.writeable):
        return MISS
    executor = comm.executor
    if (executor is not None and executor.pending) or debug_enabled():
        return MISS
    plans = getattr(comm, "_hpcdl_fast", None)
    if plans is None or plans[0] != catalog.generation:
        plans = comm._hpcdl_fast = (catalog.generation, {})
    key = (tensor.dtype, op, algorithm, tensor.nbytes)
    try:
        plan = plans[1].get(key)
    except TypeError:  # an unhashable op or algorithm: the general path names the error
        return MISS
    if plan is None:
        plan = _make_plan(comm, tensor.dtype, op, algorithm, tensor.nbytes)
        if plan is MISS:
            return MISS
        if registry.chooser_is_static() or algorithm != "auto":
            if len(plans[1]) >= _PLAN_LIMIT:
                plans[1].clear()
            plans[1][key] = plan
    if plan.__class__ is _Tuned:
        slot = plan.slot
        if slot is None or slot.calls >= slot.quiet_until or plan.winner is not slot.winner:
            return _tuned(comm, tensor, op, plan, plans[1])
        slot.calls += 1  # between checks the winner runs untimed: only the count moves
        plan = plan.fixed
    if plan is _NOTHING:
        return tensor
    _execute(comm, tensor, plan)
    return tensor


def _execute(comm: Any, tensor: np.ndarray, plan: tuple) -> None:
    mpi, datatype, mpi_op, fn, rop = plan
    if mpi is not None:
        try:
            mpi.Allreduce(_IN_PLACE, [tensor, datatype], mpi_op)
        except Exception as exc:  # an MPI error: report it like the general path does
            raise mpi_error(exc, comm, "allreduce") from exc
        return
    registry.run_allreduce(comm, fn, tensor.reshape(-1), rop)


class _Tuned:
    """The plan of ``auto`` learning online: its size class (online.Slot) and the plan
    of the class's winner, which serves the calls between two drift checks."""

    __slots__ = ("slot", "winner", "fixed")

    def __init__(self) -> None:
        self.slot: Any = None
        self.winner: str | None = None
        self.fixed: Any = None


def _plan_of(comm: Any, tensor: np.ndarray, op: Any, name: str, plans: dict) -> Any:
    key = (tensor.dtype, op, name, tensor.nbytes)
    plan = plans.get(key)
    if plan is None:
        plan = plans[key] = _make_plan(comm, tensor.dtype, op, name, tensor.nbytes)
    return plan


def _tuned(comm: Any, tensor: np.ndarray, op: Any, entry: _Tuned, plans: dict) -> np.ndarray:
    """A call that online.py times: a trial, or one of the winner's calls before a check.
    Served from the algorithm's own plan, so that native costs what a pinned native does."""
    tuner = online.tuner_for(comm)
    slot = entry.slot = tuner.slot(tensor.nbytes, tensor.dtype)
    plan = _plan_of(comm, tensor, op, slot.pick(), plans)
    clock = tuner.clock
    t0 = clock()
    _execute(comm, tensor, plan)
    tuner.done(slot, clock() - t0)
    if not slot.trialing and entry.winner is not slot.winner:
        entry.winner, entry.fixed = slot.winner, _plan_of(comm, tensor, op, slot.winner, plans)
    return tensor
