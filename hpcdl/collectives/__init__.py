"""Collective operations: the public API, the algorithms and their registry."""

from .api import allgather, allreduce, barrier, block_counts, broadcast, reduce_scatter
from .handle import Handle
from .partial import partial_allreduce
from .registry import ALLREDUCE, algorithm_names, register_allreduce

__all__ = ["allreduce", "broadcast", "allgather", "reduce_scatter", "barrier", "block_counts",
           "Handle", "partial_allreduce", "ALLREDUCE", "algorithm_names", "register_allreduce"]
