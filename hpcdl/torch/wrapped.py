"""What every hpcdl optimizer wrapper shares: the torch optimizer interface, ``step()``
that reduces first, and ``skip_synchronize()``.

A subclass implements :meth:`WrappedOptimizer.synchronize` (combine the
gradients over ``comm``) and calls ``super().__init__(optimizer, comm, name)``;
the rest (``param_groups``, ``state``, ``zero_grad``, ``state_dict``, ...) passes
through to the wrapped optimizer, so torch code (LR schedulers, GradScaler,
checkpointing) treats the wrapper as the optimizer itself.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from ..errors import InvalidArgumentError

__all__ = ["WrappedOptimizer"]


class WrappedOptimizer:
    """Base of :class:`~hpcdl.torch.DistributedOptimizer` and Horovod's Adasum wrapper."""

    def __init__(self, optimizer: torch.optim.Optimizer, comm: Any, name: str) -> None:
        self.optimizer = optimizer
        self.comm = comm
        self._op_name = name          # names the wrapper in error messages
        self._synchronized = False    # gradients of this step already combined
        self._skip = False            # inside skip_synchronize()

    # -- what torch code expects of an optimizer ---------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    # -- reduce, then step -----------------------------------------------------------------
    def synchronize(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement synchronize()")

    @contextlib.contextmanager
    def skip_synchronize(self) -> Iterator[None]:
        """Inside this block ``step()`` uses ``.grad`` as it is (after a manual ``synchronize()``)."""
        self._skip = True
        try:
            yield
        finally:
            self._skip = False

    def step(self, closure: Any = None) -> Any:
        """Combine the gradients (unless already done / skipped), then step the optimizer."""
        if closure is not None:
            raise InvalidArgumentError("step(closure) is not supported: the closure's backward "
                                       "would need its own reduction; call backward, then "
                                       "step()", rank=self.comm.rank, op=self._op_name)
        if not self._skip:
            self.synchronize()
        result = self.optimizer.step()
        self._synchronized = False
        return result
