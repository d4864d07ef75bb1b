"""hpcdl: MPI collectives and distributed training for HPC clusters.

    import hpcdl
    ctx = hpcdl.init()                 # rank, size, local_rank, node, GPU, CUDA-aware MPI
    hpcdl.allreduce(grad, op="avg")    # in place, on numpy / torch / cupy buffers

Importing hpcdl has no side effects: MPI starts at ``init()`` (or the first
collective).
"""

from .collectives import (Handle, algorithm_names, allgather, allreduce, barrier, broadcast,
                          partial_allreduce, reduce_scatter)
from .collectives.debug import set_debug
from .errors import (CommError, ContiguityError, DeviceMismatchError, DtypeError, HpcdlError,
                     InvalidArgumentError, MismatchError)
from .groups import subgroup
from .ops import ReduceOp
from .preduce import PReduce, preduce, preduce_close
from .runtime import Context, get_context, init, is_initialized
from .version import __version__

__all__ = [
    "init", "get_context", "is_initialized", "Context",
    "allreduce", "broadcast", "allgather", "reduce_scatter", "barrier", "Handle",
    "partial_allreduce", "PReduce", "preduce", "preduce_close",
    "algorithm_names", "subgroup", "ReduceOp", "set_debug",
    "HpcdlError", "InvalidArgumentError", "DtypeError", "ContiguityError",
    "DeviceMismatchError", "MismatchError", "CommError",
    "__version__",
]
