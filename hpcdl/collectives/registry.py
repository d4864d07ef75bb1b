"""Allreduce algorithms by name, and the choice behind ``algorithm="auto"``.

An algorithm is a function ``fn(comm, buf, op) -> None`` that reduces the flat,
C-contiguous host array ``buf`` in place across ``comm`` (``avg`` as a sum:
the caller divides). New algorithms register here and every entry point
(``allreduce``, the benchmark, ``hpcdl tune``) sees them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..comm.base import Communicator
from ..errors import InvalidArgumentError
from ..ops import ReduceOp
from .native import native_allreduce

__all__ = ["AllreduceFn", "ALLREDUCE", "register_allreduce", "resolve_allreduce",
           "algorithm_names"]

AllreduceFn = Callable[[Communicator, np.ndarray, ReduceOp], None]

ALLREDUCE: dict[str, AllreduceFn] = {"native": native_allreduce}

# choose(comm, nbytes, dtype) -> name; replaced by the tuned selector when one is installed
_chooser: Callable[[Communicator, int, np.dtype], str] = lambda comm, nbytes, dtype: "native"


def register_allreduce(name: str, fn: AllreduceFn) -> None:
    ALLREDUCE[name] = fn


def set_chooser(fn: Callable[[Communicator, int, np.dtype], str]) -> None:
    global _chooser
    _chooser = fn


def algorithm_names() -> list[str]:
    return ["auto", *ALLREDUCE]


def resolve_allreduce(name: str, comm: Communicator, nbytes: int, dtype: np.dtype,
                      *, rank: int | None = None) -> tuple[str, AllreduceFn]:
    """``(name, function)`` for ``name``, resolving ``"auto"``; raises on unknown names."""
    if name == "auto":
        name = _chooser(comm, nbytes, dtype)
    fn = ALLREDUCE.get(name)
    if fn is None:
        raise InvalidArgumentError(f"unknown algorithm {name!r}; choose one of "
                                   f"{', '.join(map(repr, algorithm_names()))}",
                                   rank=rank, op="allreduce")
    return name, fn
