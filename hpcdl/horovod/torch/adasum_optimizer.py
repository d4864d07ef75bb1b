"""``hvd.DistributedOptimizer(op=hvd.Adasum)``: gradients combined with Adasum per tensor.

Horovod applies Adasum to each parameter's update (the delta of a local
optimizer step); here it is applied to each parameter's gradient before the
step. For SGD without momentum the two are the same (Adasum is homogeneous:
adasum(c a, c b) = c adasum(a, b)); for momentum or Adam they differ in where
the combination happens. The reduction runs in ``step()`` (no overlap with
backward), per tensor, as Horovod's layer-wise Adasum does.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from ...collectives.handle import drain
from ...errors import InvalidArgumentError
from ...torch.wrapped import WrappedOptimizer
from .adasum import adasum_

__all__ = ["AdasumOptimizer"]


class AdasumOptimizer(WrappedOptimizer):
    """Wraps a torch optimizer; ``step()`` replaces each ``.grad`` by its Adasum over ranks."""

    def __init__(self, optimizer: torch.optim.Optimizer,
                 named_parameters: Iterable[tuple[str, torch.Tensor]] | None, compression: Any,
                 backward_passes_per_step: int, comm: Any) -> None:
        super().__init__(optimizer, comm, "DistributedOptimizer(op=Adasum)")
        self.backward_passes_per_step = backward_passes_per_step
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if named_parameters is not None:
            known = {id(p) for _, p in named_parameters}
            if any(id(p) not in known for p in params):
                raise InvalidArgumentError("named_parameters was specified, but one or more "
                                           "model parameters were not named", rank=comm.rank,
                                           op="DistributedOptimizer")
        self._params = [p for p in params if p.requires_grad]

    def synchronize(self) -> None:
        """Adasum every gradient over the ranks (a missing gradient counts as zeros)."""
        if self._synchronized:
            return
        drain(self.comm)
        for p in self._params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grad = p.grad if p.grad.is_contiguous() else p.grad.contiguous()
            adasum_(grad, self.comm)
            if grad is not p.grad:
                p.grad.copy_(grad)
        self._synchronized = True
