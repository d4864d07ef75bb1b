"""The allreduce algorithms by name, and the generation of what names resolve to.

A leaf module: the chooser (``select``), an algorithm that runs others on each
level (``hierarchical``), the fast path and the registry all read it without
importing one another. The flat algorithms are listed here; ``registry``
adds ``hierarchical`` and every later :func:`~hpcdl.collectives.registry.register_allreduce`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..comm.base import Communicator
from ..ops import ReduceOp
from .chunked import chunked_allreduce
from .native import native_allreduce
from .ring import ring_allreduce
from .tree import tree_allreduce

__all__ = ["ALLREDUCE", "AllreduceFn", "invalidate_plans"]

#: ``fn(comm, buf, op)`` reduces the flat, C-contiguous host array ``buf`` in place
#: across ``comm`` (``avg`` as a sum: the caller divides).
AllreduceFn = Callable[[Communicator, np.ndarray, ReduceOp], None]

ALLREDUCE: dict[str, AllreduceFn] = {"native": native_allreduce, "ring": ring_allreduce,
                                     "tree": tree_allreduce, "chunked": chunked_allreduce}

#: Bumped whenever what ``auto`` or a name resolves to may change (a new
#: algorithm, chooser or tuning table): cached fast-path plans then expire.
generation = 0


def invalidate_plans() -> None:
    global generation
    generation += 1
