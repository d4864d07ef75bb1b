"""The synchronised ceiling for benchmarks/horovod_compare.py: no gradient traffic, but
every rank meets the others once per step (a 4-byte ``hpcdl.allreduce`` before each
optimizer step), as every synchronous data-parallel step must.

``ceiling`` / ``sync-ceiling`` is what synchronisation alone costs on the machine (ranks
whose cores run at different speeds wait for the slowest); ``hpcdl`` / ``sync-ceiling``
is what hpcdl's gradient communication costs on top of it.
"""

import numpy as np

import hpcdl
from hpcdl.horovod.torch import *  # noqa: F401,F403 - the rest of the API, unchanged
from hvd_nocomm import broadcast_optimizer_state, broadcast_parameters  # noqa: F401


def DistributedOptimizer(optimizer, *args, **kwargs):  # noqa: N802 - Horovod's name
    step = optimizer.step
    token = np.zeros(1, np.float32)

    def synced_step(*a, **k):
        hpcdl.allreduce(token)      # the meeting point; no gradient moves
        return step(*a, **k)

    optimizer.step = synced_step
    return optimizer
