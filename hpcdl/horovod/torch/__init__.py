"""``import hpcdl.horovod.torch as hvd``: horovod.torch 0.28's public API over hpcdl.

Every name Horovod's ``horovod/torch/__init__.py`` exports is here; what each
maps to, and the few that raise, are listed in docs/migrating-from-horovod.md.
"""

from . import elastic
from .basics import (HorovodInternalError, ccl_built, cross_rank, cross_size, cuda_built,
                     ddl_built, gloo_built, gloo_enabled, init, is_homogeneous, is_initialized,
                     local_rank, local_size, mpi_built, mpi_enabled, mpi_threads_supported,
                     nccl_built, rank, rocm_built, shutdown, size, start_timeline,
                     stop_timeline)
from .collectives import (allgather, allgather_async, alltoall, alltoall_async, barrier,
                          broadcast, broadcast_, broadcast_async, broadcast_async_, join,
                          reducescatter, reducescatter_async)
from .compression import Compression, Compressor
from .functions import (allgather_object, broadcast_object, broadcast_optimizer_state,
                        broadcast_parameters)
from .handles import poll, synchronize
from .optimizer import DistributedOptimizer
from .process_sets import ProcessSet, add_process_set, global_process_set, remove_process_set
from .reduce import (Adasum, Average, Max, Min, Product, Sum, allreduce, allreduce_,
                     allreduce_async, allreduce_async_, grouped_allreduce, grouped_allreduce_,
                     grouped_allreduce_async, grouped_allreduce_async_)

__all__ = [
    "init", "shutdown", "is_initialized", "rank", "size", "local_rank", "local_size",
    "cross_rank", "cross_size", "is_homogeneous", "mpi_threads_supported", "mpi_enabled",
    "mpi_built", "gloo_enabled", "gloo_built", "nccl_built", "ddl_built", "ccl_built",
    "cuda_built", "rocm_built", "start_timeline", "stop_timeline", "HorovodInternalError",
    "Average", "Sum", "Adasum", "Min", "Max", "Product", "Compression", "Compressor",
    "allreduce", "allreduce_", "allreduce_async", "allreduce_async_", "grouped_allreduce",
    "grouped_allreduce_", "grouped_allreduce_async", "grouped_allreduce_async_",
    "allgather", "allgather_async", "broadcast", "broadcast_", "broadcast_async",
    "broadcast_async_", "alltoall", "alltoall_async", "reducescatter", "reducescatter_async",
    "join", "barrier", "poll", "synchronize", "DistributedOptimizer", "broadcast_parameters",
    "broadcast_optimizer_state", "broadcast_object", "allgather_object", "ProcessSet",
    "global_process_set", "add_process_set", "remove_process_set", "elastic",
]
