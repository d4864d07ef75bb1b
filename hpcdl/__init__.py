"""hpcdl: MPI collectives and distributed training for HPC clusters.

    import hpcdl
    ctx = hpcdl.init()                 # rank, size, local_rank, node, GPU, CUDA-aware MPI
    hpcdl.allreduce(grad, op="avg")    # in place, on numpy / torch / cupy buffers

Importing hpcdl has no side effects: MPI starts at ``init()`` (or the first
collective). The public names load on first use (PEP 562): ``import hpcdl``
imports neither ``mpi4py.MPI`` (whose import calls ``MPI_Init``) nor torch, so
a launcher, a ``--help`` or a tool that only reads ``hpcdl.__version__`` stays
fast and starts no MPI.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from .version import __version__

# public name -> the module (relative to hpcdl) that defines it
_LAZY: dict[str, str] = {
    "init": ".runtime", "get_context": ".runtime", "is_initialized": ".runtime",
    "Context": ".runtime",
    "allreduce": ".collectives", "broadcast": ".collectives", "allgather": ".collectives",
    "reduce_scatter": ".collectives", "barrier": ".collectives", "Handle": ".collectives",
    "partial_allreduce": ".collectives", "algorithm_names": ".collectives",
    "PReduce": ".preduce", "preduce": ".preduce", "preduce_close": ".preduce",
    "subgroup": ".groups", "ReduceOp": ".ops", "set_debug": ".collectives.debug",
    "HpcdlError": ".errors", "InvalidArgumentError": ".errors", "DtypeError": ".errors",
    "ContiguityError": ".errors", "DeviceMismatchError": ".errors",
    "MismatchError": ".errors", "CommError": ".errors", "ProcessFailed": ".errors",
}

__all__ = [
    "init", "get_context", "is_initialized", "Context",
    "allreduce", "broadcast", "allgather", "reduce_scatter", "barrier", "Handle",
    "partial_allreduce", "PReduce", "preduce", "preduce_close",
    "algorithm_names", "subgroup", "ReduceOp", "set_debug",
    "HpcdlError", "InvalidArgumentError", "DtypeError", "ContiguityError",
    "DeviceMismatchError", "MismatchError", "CommError", "ProcessFailed",
    "__version__",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads these
    from .collectives import (Handle, algorithm_names, allgather, allreduce, barrier, broadcast,
                              partial_allreduce, reduce_scatter)
    from .collectives.debug import set_debug
    from .errors import (CommError, ContiguityError, DeviceMismatchError, DtypeError,
                         HpcdlError, InvalidArgumentError, MismatchError, ProcessFailed)
    from .groups import subgroup
    from .ops import ReduceOp
    from .preduce import PReduce, preduce, preduce_close
    from .runtime import Context, get_context, init, is_initialized


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        # a submodule (hpcdl.model, hpcdl.torch, ...) not yet imported is not an attribute:
        # the same AttributeError a plain package gives
        raise AttributeError(f"module 'hpcdl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """``hpcdl.preduce`` is the function (as it was when this file imported it eagerly),
    though ``hpcdl/preduce/`` is also a subpackage: importing a submodule sets the
    parent's attribute to it, so the name is a property that keeps the function."""

    @property
    def preduce(self) -> Any:
        return getattr(importlib.import_module(".preduce", __name__), "preduce")

    @preduce.setter
    def preduce(self, module: Any) -> None:  # the import system's setattr(hpcdl, "preduce", pkg)
        pass


sys.modules[__name__].__class__ = _Package
