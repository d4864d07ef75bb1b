"""``hvd.DistributedOptimizer(op=hvd.Adasum)``: gradients combined with Adasum per tensor.

Horovod applies Adasum to each parameter's update (the delta of a local
optimizer step); here it is applied to each parameter's gradient before the
step. For SGD without momentum the two are the same (Adasum is homogeneous:
adasum(c a, c b) = c adasum(a, b)); for momentum or Adam they differ in where
the combination happens. The reduction runs in ``step()`` (no overlap with
backward), per tensor, as Horovod's layer-wise Adasum does.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

import torch

from ...collectives.handle import drain
from ...errors import InvalidArgumentError
from .adasum import adasum_

__all__ = ["AdasumOptimizer"]


class AdasumOptimizer:
    """Wraps a torch optimizer; ``step()`` replaces each ``.grad`` by its Adasum over ranks."""

    def __init__(self, optimizer: torch.optim.Optimizer,
                 named_parameters: Iterable[tuple[str, torch.Tensor]] | None, compression: Any,
                 backward_passes_per_step: int, comm: Any) -> None:
        self.optimizer = optimizer
        self.comm = comm
        self.backward_passes_per_step = backward_passes_per_step
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if named_parameters is not None:
            known = {id(p) for _, p in named_parameters}
            if any(id(p) not in known for p in params):
                raise InvalidArgumentError("named_parameters was specified, but one or more "
                                           "model parameters were not named", rank=comm.rank,
                                           op="DistributedOptimizer")
        self._params = [p for p in params if p.requires_grad]
        self._synchronized = False
        self._skip = False

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:
        return self.optimizer.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

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

    @contextlib.contextmanager
    def skip_synchronize(self) -> Iterator[None]:
        self._skip = True
        try:
            yield
        finally:
            self._skip = False

    def step(self, closure: Any = None) -> Any:
        if not self._skip:
            self.synchronize()
        result = self.optimizer.step(closure)
        self._synchronized = False
        return result
