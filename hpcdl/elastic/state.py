"""The state a training loop keeps: committed in memory every step, restored after a failure.

Data-parallel ranks hold the same model, optimizer state and data position, so
a commit is a local copy (no communication) and any survivor's commit can stand
in for a dead rank's. After a shrink, :meth:`State.sync` agrees on the newest
step every survivor can provide: when all committed the same step (the usual
case) each restores its own copy; when a failure hit between two ranks'
commits (one finished a step's allreduce, another got the error from it), the
lowest rank holding the newest commit broadcasts it.
"""

from __future__ import annotations

import copy
import io
import random
from typing import Any, Callable

import numpy as np
import torch

from ..runtime import Context
from .shrink import agree

__all__ = ["State"]


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    return copy.deepcopy(value)


class State:
    """``model``, ``optimizer`` (anything with ``state_dict``/``load_state_dict``), the
    :class:`~hpcdl.elastic.ElasticSampler` and plain values (``epoch=1, step=0``, read
    and written as attributes), plus the RNG states (torch, NumPy, random).

    ``commit()`` after each step; ``on_reset(fn)`` registers ``fn(ctx)``, called after a
    shrink to rebuild what depends on the communicator (a DistributedOptimizer, a torch
    process group)."""

    def __init__(self, *, model: Any = None, optimizer: Any = None, sampler: Any = None,
                 **values: Any) -> None:
        object.__setattr__(self, "_objects", {"model": model, "optimizer": optimizer,
                                              "sampler": sampler})
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_saved", None)
        object.__setattr__(self, "_callbacks", [])
        object.__setattr__(self, "commits", 0)
        # The recoveries so far: a record of what happened, so never rolled back.
        object.__setattr__(self, "failures", [])
        self.commit()

    # plain values as attributes: state.epoch, state.step = ...
    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "_values")
        objects = object.__getattribute__(self, "_objects")
        if name in values:
            return values[name]
        if name in objects:
            return objects[name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._objects:
            self._objects[name] = value   # e.g. a rebuilt DistributedOptimizer
        elif name in ("commits", "failures"):
            object.__setattr__(self, name, value)
        else:
            self._values[name] = value

    def on_reset(self, fn: Callable[[Context], None]) -> None:
        self._callbacks.append(fn)

    def snapshot(self) -> dict[str, Any]:
        """What a commit holds (copies, not references)."""
        out: dict[str, Any] = {"values": copy.deepcopy(self._values),
                               "rng": (torch.get_rng_state(), np.random.get_state(),
                                       random.getstate())}
        for name, obj in self._objects.items():
            if obj is not None:
                out[name] = _clone(obj.state_dict())
        return out

    def commit(self) -> None:
        """Keep the current state as the one to go back to (local, no communication)."""
        object.__setattr__(self, "_saved", self.snapshot())
        object.__setattr__(self, "commits", self.commits + 1)

    @property
    def committed_step(self) -> int:
        return int(self._saved["values"].get("step", 0))

    def restore(self, saved: dict[str, Any] | None = None) -> None:
        """Go back to the last commit (or to ``saved``, another rank's commit)."""
        saved = self._saved if saved is None else saved
        self._values.clear()
        self._values.update(copy.deepcopy(saved["values"]))
        t, n, r = saved["rng"]
        torch.set_rng_state(t)
        np.random.set_state(n)
        random.setstate(r)
        for name, obj in self._objects.items():
            if obj is not None and name in saved:
                obj.load_state_dict(_clone(saved[name]))
        object.__setattr__(self, "_saved", saved)

    def sync(self, ctx: Context) -> int:
        """Collective over ``ctx`` (the survivors): every rank ends at the same committed
        state, the newest any survivor has; returns its step."""
        mine = self.committed_step
        newest = max(ctx.comm.allgather_object(mine))
        if agree(ctx, mine == newest):
            self.restore()
            return newest
        holder = min(r for r, s in enumerate(ctx.comm.allgather_object(mine)) if s == newest)
        blob = None
        if ctx.rank == holder:
            buf = io.BytesIO()
            torch.save(self._saved, buf)
            blob = buf.getvalue()
        blob = ctx.comm.bcast_object(blob, root=holder)
        self.restore(torch.load(io.BytesIO(blob), weights_only=False))
        return newest

    def reset(self, ctx: Context) -> None:
        """After a shrink: the rebuild callbacks, then the sampler re-sharded."""
        for fn in self._callbacks:
            fn(ctx)
        sampler = self._objects.get("sampler")
        if sampler is not None:
            sampler.set_comm(ctx.comm)
