"""Mixed precision: every rank skips, or takes, the same step.

``torch.amp.GradScaler`` skips ``optimizer.step()`` when it finds an inf/NaN in
the gradients and then halves its scale. Each rank decides from its own
gradients, so if one rank overflowed and another did not, the models (and the
scales) drift apart for good. :class:`GradScaler` is a drop-in subclass that
fixes the decision collectively:

1. before unscaling it calls the optimizer's ``synchronize()`` when it has one
   (a :class:`~hpcdl.torch.DistributedOptimizer`), so it unscales the averaged
   gradients rather than local ones the reduction would overwrite;
2. after unscaling it allreduces the found-inf flag with ``max``: one rank's
   overflow makes every rank skip the step and back off its scale.

After step 1 the gradients are already the same on every rank, so step 2
matters when the flags can still differ: gradients a rank touched after the
reduction, ``skip_synchronize()`` setups, a plain (non-distributed) optimizer,
or an allreduce algorithm whose float results differ in the last bit.

    scaler = hpcdl.torch.GradScaler("cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        loss = loss_fn(model(x), y)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)                 # optional: reduces, unscales, agrees
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()

On the CPU use ``torch.autocast("cpu", dtype=torch.bfloat16)``: bfloat16 has
float32's range, so it needs no scaler.
"""

from __future__ import annotations

from typing import Any

import torch

from ..collectives import allreduce
from ..comm.base import Communicator
from ..runtime import default_comm

__all__ = ["GradScaler", "agree_found_inf"]


def agree_found_inf(scaler: torch.amp.GradScaler, optimizer: Any,
                    comm: Communicator | None = None) -> bool:
    """Make ``scaler``'s found-inf flags for ``optimizer`` the max over all ranks.

    Call it after ``scaler.unscale_(optimizer)`` (a collective: every rank
    calls it). Returns whether the step will be skipped. It edits the
    scaler's per-optimizer record (``found_inf_per_device``), which is where
    ``step()`` and ``update()`` read the decision from.
    """
    c = default_comm(comm)
    record = scaler._per_optimizer_states[id(optimizer)]
    flags: dict[torch.device, torch.Tensor] = record["found_inf_per_device"]
    local = max((float(v.item()) for v in flags.values()), default=0.0)
    agreed = torch.tensor([local], dtype=torch.float64)
    allreduce(agreed, op="max", comm=c)
    value = float(agreed.item())
    if not flags:
        # No gradients here, but update() needs a record to back off from.
        scale = scaler._scale
        device = scale.device if scale is not None else torch.device("cpu")
        flags[device] = torch.zeros(1, dtype=torch.float32, device=device)
    for v in flags.values():
        v.fill_(value)
    return value > 0


class GradScaler(torch.amp.GradScaler):
    """``torch.amp.GradScaler`` whose skip decision is agreed across ranks.

    Same arguments as the torch class, plus ``comm`` (default: hpcdl's).
    """

    def __init__(self, device: str = "cuda", *args: Any, comm: Communicator | None = None,
                 **kwargs: Any) -> None:
        super().__init__(device, *args, **kwargs)
        self.comm = comm

    def unscale_(self, optimizer: Any) -> None:
        if not self.is_enabled():
            return
        synchronize = getattr(optimizer, "synchronize", None)
        if callable(synchronize):
            synchronize()
        super().unscale_(optimizer)
        agree_found_inf(self, optimizer, self.comm)
