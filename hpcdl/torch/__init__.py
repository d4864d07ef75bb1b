"""PyTorch integration: data-parallel training over MPI.

    import hpcdl.torch as hdt
    ctx = hpcdl.init()
    opt = hdt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   named_parameters=model.named_parameters())
    hdt.broadcast_parameters(model.state_dict(), root_rank=0)
    hdt.broadcast_optimizer_state(opt, root_rank=0)
    sampler = hdt.DistributedSampler(train_set, shuffle=True, seed=0)

See docs/training.md.
"""

from .amp import GradScaler, agree_found_inf
from .broadcast import broadcast_object, broadcast_optimizer_state, broadcast_parameters
from .optimizer import DEFAULT_FUSION_MB, DistributedOptimizer
from .preduce import PReduceAverager
from .sampler import DistributedSampler

__all__ = ["DistributedOptimizer", "DEFAULT_FUSION_MB", "broadcast_parameters",
           "broadcast_optimizer_state", "broadcast_object", "DistributedSampler",
           "GradScaler", "agree_found_inf", "PReduceAverager"]
