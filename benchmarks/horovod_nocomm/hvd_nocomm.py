"""The ceiling for benchmarks/horovod_compare.py: Horovod's API with no communication.

The synthetic benchmark imports this as ``hvd``: ranks, sizes and init come
from hpcdl (the processes are launched and placed exactly as in the measured
runs) but the optimizer steps on local gradients and nothing is broadcast.
"""

from hpcdl.horovod.torch import *  # noqa: F401,F403 - the rest of the API, unchanged


def DistributedOptimizer(optimizer, *args, **kwargs):  # noqa: N802 - Horovod's name
    return optimizer


def broadcast_parameters(params, root_rank):
    return None


def broadcast_optimizer_state(optimizer, root_rank, model=None):
    return None
