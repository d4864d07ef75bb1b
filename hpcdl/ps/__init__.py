"""Parameter server: synchronous, asynchronous and stale-synchronous SGD over MPI.

    import hpcdl.ps as ps
    p = ps.setup(dict(model_arrays), optimizer=ps.SGD(lr=0.1, momentum=0.9),
                 mode="ssp", staleness=2, num_servers=2)
    if p.is_server:
        p.serve()
    else:
        ...  p.push_pull(grads) ...;  p.close()

Roles (``roles.py``), sharding (``sharding.py``), the wire protocol
(``protocol.py``), the server loop (``server.py``), the worker client
(``worker.py``), stores (``store.py``) and server-side optimizers
(``optim.py``); checkpoints: the servers' SAVE handling (``quiesce.py``) and
:class:`~hpcdl.ps.checkpoint.PSCheckpoint` (``checkpoint.py``). For torch:
:class:`hpcdl.torch.ParameterServer`. See docs/parameter-server.md and
docs/fault-tolerance.md.
"""

from .api import MODES, setup
from .optim import SGD, Adam, from_torch
from .protocol import PSError, PSTimeoutError
from .sharding import Piece, ShardPlan, plan_shards
from .store import DiskStore, MemoryStore, StoreError

__all__ = ["setup", "MODES", "SGD", "Adam", "from_torch", "PSError", "PSTimeoutError",
           "plan_shards", "ShardPlan", "Piece", "MemoryStore", "DiskStore", "StoreError"]
