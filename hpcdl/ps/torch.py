"""The parameter server from a torch training loop, in the allreduce path's shape.

    ps = hpcdl.torch.ParameterServer(model, torch.optim.Adam(model.parameters(), lr=3e-3),
                                     mode="ssp", staleness=2, num_servers=1)
    if ps.is_server:
        ps.serve()
    else:
        for x, y in loader:
            ps.zero_grad()
            loss_fn(model(x), y).backward()
            ps.step()            # push the gradients, pull the new parameters into the model
        ps.close()

The torch optimizer is only read for its hyper-parameters (SGD or Adam); the
servers apply the same rule (see :mod:`hpcdl.ps.optim`). A parameter whose
``.grad`` is None is pushed as zeros. CPU and CUDA models both work: tensors
travel through host memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .api import setup

__all__ = ["ParameterServer"]


class ParameterServer:
    def __init__(self, model: torch.nn.Module, optimizer: Any, *, mode: str = "sync",
                 staleness: int = 0, num_servers: int = 1, **kwargs: Any) -> None:
        self.model = model
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.ps = setup([(n, p.detach().cpu().numpy()) for n, p in self.named],
                        optimizer=optimizer, mode=mode, staleness=staleness,
                        num_servers=num_servers, **kwargs)
        self.is_server = self.ps.is_server
        self.roles = self.ps.roles
        # Data parallel helpers: workers talk among themselves on this communicator.
        self.worker_comm = None if self.is_server else self.roles.group
        self.num_workers = len(self.roles.workers)
        self.worker_rank = None if self.is_server else self.roles.index
        self._zeros: dict[str, np.ndarray] = {}
        if not self.is_server:
            self._load(self.ps.params)

    def _load(self, params: dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            for n, p in self.named:
                p.copy_(torch.from_numpy(params[n]).to(p.device, p.dtype))

    def serve(self) -> dict[str, Any]:
        """Servers: answer workers until every one has called :meth:`close`."""
        return self.ps.serve()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        """Push this step's gradients and load the parameters of the next clock."""
        grads = {}
        for n, p in self.named:
            if p.grad is None:
                z = self._zeros.get(n)
                if z is None:
                    z = self._zeros[n] = np.zeros(tuple(p.shape), self.ps.plan.dtype)
                grads[n] = z
            else:
                grads[n] = p.grad
        self._load(self.ps.push_pull(grads))

    def pull(self) -> None:
        """Load the servers' current parameters into the model (e.g. before evaluating)."""
        self._load(self.ps.pull())

    def long_phase(self, what: str = "a long phase") -> Any:
        """Workers: a block without pushes (evaluation, checkpoint) that the servers must
        not take for a stuck worker (:meth:`hpcdl.ps.worker.Worker.long_phase`)."""
        return self.ps.long_phase(what)

    @property
    def clock(self) -> int:
        return self.ps.clock

    @property
    def max_clock_gap(self) -> int:
        return self.ps.max_clock_gap

    def close(self) -> None:
        self.ps.close()
