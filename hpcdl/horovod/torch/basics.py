"""``hvd.init()``, ranks and sizes, and the ``*_built()`` answers, over ``hpcdl.init()``.

Horovod keeps its state in a C++ singleton; here it is one :class:`_State`
holding the hpcdl :class:`~hpcdl.runtime.Context` that ``init`` returned, so
``init(comm=...)`` over a sub-communicator works as in Horovod.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ... import runtime
from ...collectives.handle import drain
from ...errors import HpcdlError, InvalidArgumentError
from .process_sets import register_process_sets, reset_process_sets
from .state import STATE as _STATE
from .state import context

__all__ = ["init", "shutdown", "is_initialized", "rank", "size", "local_rank", "local_size",
           "cross_rank", "cross_size", "is_homogeneous", "mpi_threads_supported",
           "mpi_enabled", "mpi_built", "gloo_enabled", "gloo_built", "nccl_built",
           "ddl_built", "ccl_built", "cuda_built", "rocm_built", "start_timeline",
           "stop_timeline", "HorovodInternalError", "context"]


class HorovodInternalError(HpcdlError):
    """Horovod's name for a failed collective (kept so ``except`` clauses still match)."""


def init(comm: Any = None, process_sets: Sequence[Any] | None = None) -> None:
    """Start hpcdl (idempotent). ``comm``: an mpi4py communicator or a list of world ranks."""
    if isinstance(comm, (list, tuple)):
        from mpi4py import MPI

        world = MPI.COMM_WORLD
        ranks = [int(r) for r in comm]
        group = world.Get_group().Incl(ranks)
        sub = world.Create(group)
        if sub == MPI.COMM_NULL:
            raise InvalidArgumentError(f"this rank ({world.Get_rank()}) is not in "
                                       f"init(comm={ranks})", rank=world.Get_rank(),
                                       op="init")
        comm = sub
    ctx = runtime.init(comm) if comm is not None else runtime.init()
    _STATE.ctx = ctx
    sizes = ctx.comm.allgather_object(ctx.local_size)
    _STATE.homogeneous = len(set(sizes)) == 1
    reset_process_sets(ctx.comm)
    if process_sets:
        register_process_sets(process_sets)


def shutdown() -> None:
    """Finish queued operations; Horovod calls fail until the next ``init()``."""
    if _STATE.ctx is not None:
        drain(_STATE.ctx.comm)
    _STATE.ctx = None


def is_initialized() -> bool:
    return _STATE.ctx is not None


def rank() -> int:
    return context().rank


def size() -> int:
    return context().size


def local_rank() -> int:
    return context().local_rank


def local_size() -> int:
    return context().local_size


def cross_rank() -> int:
    """This rank's node index (Horovod: rank among the ranks with the same local_rank)."""
    return context().cross_comm.rank


def cross_size() -> int:
    return context().cross_comm.size


def is_homogeneous() -> bool:
    """True when every node runs the same number of ranks."""
    context()
    return _STATE.homogeneous


def mpi_threads_supported() -> bool:
    return context().thread_level == "multiple"


# What hpcdl is built on, answered truthfully: MPI always; no Gloo, NCCL, DDL or
# oneCCL. CUDA tensors go through CUDA-aware MPI or host staging (docs/gpu.md).
def mpi_built(verbose: bool = False) -> bool:
    return True


def mpi_enabled() -> bool:
    return True


def gloo_built(verbose: bool = False) -> bool:
    return False


def gloo_enabled() -> bool:
    return False


def nccl_built(verbose: bool = False) -> int:
    return 0


def ddl_built(verbose: bool = False) -> bool:
    return False


def ccl_built(verbose: bool = False) -> bool:
    return False


def cuda_built(verbose: bool = False) -> bool:
    """True when this torch can hold CUDA tensors (hpcdl reduces them via MPI)."""
    return torch.version.cuda is not None


def rocm_built(verbose: bool = False) -> bool:
    return getattr(torch.version, "hip", None) is not None


def start_timeline(file_path: str, mark_cycles: bool = False) -> None:
    raise InvalidArgumentError("Horovod's timeline is not available in hpcdl; set "
                               "HPCDL_DEBUG=1 to check every collective across ranks, or use "
                               "torch.profiler for a trace", op="start_timeline")


def stop_timeline() -> None:
    raise InvalidArgumentError("Horovod's timeline is not available in hpcdl (see "
                               "start_timeline)", op="stop_timeline")
