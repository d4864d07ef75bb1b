"""PyTorch integration: data-parallel training over MPI.

    import hpcdl.torch as hdt
    ctx = hpcdl.init()
    opt = hdt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   named_parameters=model.named_parameters())
    hdt.broadcast_parameters(model.state_dict(), root_rank=0)
    hdt.broadcast_optimizer_state(opt, root_rank=0)
    sampler = hdt.DistributedSampler(train_set, shuffle=True, seed=0)

The torch.distributed backend "hpcdl" is registered on import
(docs/torch-backend.md).

See docs/training.md.
"""

from .amp import GradScaler, agree_found_inf
from .backend import Options as BackendOptions
from .backend import init_process_group, register as _register_backend
from .broadcast import broadcast_object, broadcast_optimizer_state, broadcast_parameters
from ..ps.torch import ParameterServer
from .optimizer import DEFAULT_FUSION_MB, DistributedOptimizer
from ..preduce.torch import PReduceAverager
from .sampler import DistributedSampler

__all__ = ["DistributedOptimizer", "DEFAULT_FUSION_MB", "broadcast_parameters",
           "broadcast_optimizer_state", "broadcast_object", "DistributedSampler",
           "GradScaler", "agree_found_inf", "init_process_group", "BackendOptions",
           "ParameterServer",
           "PReduceAverager"]

# `import hpcdl.torch` makes torch.distributed.init_process_group("hpcdl") work.
_register_backend()
