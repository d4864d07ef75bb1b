"""Allreduce algorithms by name, and the choice behind ``algorithm="auto"``.

An algorithm is a function ``fn(comm, buf, op) -> None`` that reduces the flat,
C-contiguous host array ``buf`` in place across ``comm`` (``avg`` as a sum:
the caller divides). New algorithms register here and every entry point
(``allreduce``, the benchmark, ``hpcdl tune``) sees them.

Built in: ``native`` (the MPI library's own), ``ring`` (bandwidth-optimal),
``tree`` (latency-optimal recursive doubling), ``hierarchical`` (node-aware).
``auto`` learns online by default (:mod:`hpcdl.collectives.online`: the first
calls of each size class try the candidates, the ranks agree on the fastest);
with ``HPCDL_TUNE=off``, on one rank, or under a custom chooser it asks the
chooser, by default :func:`hpcdl.collectives.select.choose` (a crossover table
that ``hpcdl tune`` measures).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..comm.base import Communicator
from ..errors import InvalidArgumentError
from ..ops import ReduceOp, finish_avg
from .catalog import ALLREDUCE, AllreduceFn, invalidate_plans
from .hierarchical import hierarchical_allreduce
from .native import native_allreduce, native_allreduce_avg
from .online import enabled as online_enabled, tuned_allreduce, tuner_for
from .select import choose

__all__ = ["run_allreduce", "AllreduceFn", "ALLREDUCE", "register_allreduce", "resolve_allreduce",
           "algorithm_names", "set_chooser", "invalidate_plans", "chooser_is_static",
           "tuned_allreduce"]

Chooser = Callable[[Communicator, int, np.dtype], str]

ALLREDUCE["hierarchical"] = hierarchical_allreduce  # the flat ones are in catalog.py

# choose(comm, nbytes, dtype) -> name of a registered algorithm
_chooser: Chooser = choose

def chooser_is_static() -> bool:
    """True while ``auto`` is the table-driven chooser, whose answer for a given
    (communicator size, bytes, dtype) is fixed until the table is reloaded; a
    custom chooser (a dynamic policy) is asked on every call."""
    return _chooser is choose


def register_allreduce(name: str, fn: AllreduceFn) -> None:
    if name == "auto":
        raise InvalidArgumentError("'auto' is reserved for the chooser", op="register_allreduce")
    ALLREDUCE[name] = fn
    invalidate_plans()


def set_chooser(fn: Chooser) -> None:
    """Replace what ``auto`` runs (e.g. a dynamic policy); ``set_chooser(choose)`` restores."""
    global _chooser
    _chooser = fn
    invalidate_plans()


def algorithm_names() -> list[str]:
    return ["auto", *ALLREDUCE]


def resolve_allreduce(name: str, comm: Communicator, nbytes: int, dtype: np.dtype,
                      *, rank: int | None = None, online: bool = True) -> tuple[str, AllreduceFn]:
    """``(name, function)`` for ``name``, resolving ``"auto"``; raises on unknown names.

    ``auto`` learning online resolves to ``("auto", tuned_allreduce)``: which
    algorithm runs is decided when the call runs, in the communicator's order
    (an async call's turn comes on the progress thread). ``online=False`` asks
    the chooser instead (a CUDA-aware direct path the trials would not see)."""
    if name == "auto":
        if online and comm.size > 1 and _chooser is choose and online_enabled():
            return name, tuned_allreduce
        name = _chooser(comm, nbytes, dtype)
    fn = ALLREDUCE.get(name) if isinstance(name, str) else None
    if fn is None:
        raise InvalidArgumentError(f"unknown algorithm {name!r}; choose one of "
                                   f"{', '.join(map(repr, algorithm_names()))}",
                                   rank=rank, op="allreduce")
    return name, fn


def run_allreduce(comm: Communicator, fn: AllreduceFn, buf: np.ndarray, op: ReduceOp) -> None:
    """Run algorithm ``fn`` on ``buf`` in place and finish ``avg``.

    The native algorithm averages in float32 before rounding (a float16 sum may
    overflow where the mean does not); the others divide their rounded sum.
    """
    if fn is tuned_allreduce:  # each candidate with its own avg (native's in float32)
        tuner_for(comm).run(buf, lambda name: run_allreduce(comm, ALLREDUCE[name], buf, op))
        return
    if op is ReduceOp.AVG and fn is native_allreduce:
        native_allreduce_avg(comm, buf)
        return
    fn(comm, buf, op)
    if op is ReduceOp.AVG:
        finish_avg(buf, comm.size)
