"""Model averaging with dynamic P-Reduce: each rank steps its own optimizer, then
averages its parameters with whichever ranks are ready (``hpcdl.PReduce``).

    session = hpcdl.PReduce(2, total_steps=steps)
    avg = hdt.PReduceAverager(model.parameters(), session)
    while True:
        loss.backward(); opt.step()
        if avg().kind == "stop":
            break

The parameters travel as one flat buffer (one message per group instead of one
per tensor); it is copied back only when the group had a partner.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from ..errors import DtypeError
from .messages import Reply
from .session import PReduce

__all__ = ["PReduceAverager"]


class PReduceAverager:
    __slots__ = ("params", "session", "flat", "_slices")

    def __init__(self, params: Iterable[torch.Tensor], session: PReduce) -> None:
        self.params = [p for p in params]
        self.session = session
        dtypes = {p.dtype for p in self.params}
        devices = {p.device for p in self.params}
        if len(dtypes) != 1 or len(devices) != 1:
            raise DtypeError(f"parameters mix dtypes {sorted(map(str, dtypes))} or devices "
                             f"{sorted(map(str, devices))}; P-Reduce averages one flat buffer",
                             rank=session.rank, op="PReduceAverager")
        total = sum(p.numel() for p in self.params)
        self.flat = torch.empty(total, dtype=dtypes.pop(), device=devices.pop())
        self._slices: list[tuple[int, int]] = []
        offset = 0
        for p in self.params:
            self._slices.append((offset, offset + p.numel()))
            offset += p.numel()

    @torch.no_grad()
    def _run(self, call: Any) -> Reply:
        for p, (a, b) in zip(self.params, self._slices):
            self.flat[a:b].copy_(p.reshape(-1))
        reply = call(self.flat)
        if reply is not None and len(reply.members) > 1:
            for p, (a, b) in zip(self.params, self._slices):
                p.copy_(self.flat[a:b].view_as(p))
        return reply

    def __call__(self) -> Reply:
        """Report a local step done; average the parameters with this rank's group."""
        return self._run(self.session)

    def close(self) -> Reply | None:
        """This rank is done: wait for the others, then one full average (see PReduce.close)."""
        return self._run(self.session.close)
