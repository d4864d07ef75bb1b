"""Checkpoints of a pipelined model: every stage's state under the whole model's names.

    bounds = hp.stage_bounds(builders, grid.stages, balance)
    stage = hp.build_stage(builders, grid.stages, grid.stage, balance)
    named = hp.whole_model_names(stage, bounds[grid.stage])   # "3.0.weight", not "0.0.weight"
    ck = hp.PipelineCheckpoint(dir, every=50, grid=grid, model=named, optimizer=adam,
                               sampler=sampler, extra={"history": history}, resume=True)
    for epoch in ck.epochs(1, epochs + 1):
        sampler.set_epoch(epoch)
        for x, y in ck.batches(loader, carry={"running": running}):
            ...one pipeline step...

Each rank holds one stage, and the replicas of a stage hold identical state.
The model's and the optimizer's tensors go through ``torch.distributed.checkpoint``
(CheckpointManager's ``sharded=``), keyed by the *whole* model's parameter names:
DCP writes each key once (replicas deduplicated) and on load every rank reads
the keys of whatever stage it holds now, so a checkpoint written at one layout
(S stages x D replicas) loads at another (other D, other S where the layers
split differently). The optimizer state is torch's own
``get_optimizer_state_dict(..., flatten_optimizer_state_dict=True)``: one key
per parameter and value, so stages never collide. Only its tensors go to DCP
(DCP reads non-tensor values back with a full unpickler); the few
hyperparameters (lr, betas, ...) are gathered from every rank into
``shared.pt``, read with ``torch.load(weights_only=True)``.

Data position: the sampler shards by replica, so the global position counts
samples over the D replicas (``DistributedSampler.set_start`` re-deals the
rest over however many replicas run now). RNG states and the running loss
sums are per rank. Resume at the same layout is exact (bit-identical
parameters at the end); at another layout the RNGs are reseeded from (seed,
step, rank) and the running sums go to rank 0.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)

from .. import collectives, runtime

from ..checkpoint import rng_state, state_sha256
from ..checkpoint.loop import CheckpointLoop
from ..checkpoint.state import restore_extra, seed_everything
from ..errors import InvalidArgumentError
from .grid import Grid

__all__ = ["PipelineCheckpoint", "whole_model_names", "pipeline_sha256"]

_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


def whole_model_names(stage: nn.Sequential, first_layer: int) -> nn.Module:
    """A view of ``stage`` (consecutive layers of a model, the first being layer
    ``first_layer``) whose parameters carry the whole model's names: layer ``i`` of the
    stage is child ``str(first_layer + i)``, as in ``nn.Sequential(*all_layers)``. The
    view shares the stage's parameters (no copy)."""
    view = nn.Module()
    for i, layer in enumerate(stage):
        view.add_module(str(first_layer + i), layer)
    return view


def pipeline_sha256(model: nn.Module, grid: Grid) -> str:
    """Collective: :func:`~hpcdl.checkpoint.params_sha256` of the whole model, its stages
    gathered from replica 0 in order; equals the hash of the unsplit model, so runs at
    different layouts compare."""
    mine = ([(n, t.detach().cpu()) for n, t in model.state_dict().items()]
            if grid.replica == 0 else None)
    everyone = grid.comm.allgather_object(mine)
    return state_sha256(item for stage in everyone[:grid.stages] for item in stage)


class PipelineCheckpoint(CheckpointLoop):
    """Saves and resumes a pipelined training loop (see the module docstring)."""

    def __init__(self, directory: "str | Path | None", every: int, *, grid: Grid,
                 model: nn.Module, optimizer: torch.optim.Optimizer, sampler: Any = None,
                 extra: dict[str, Any] | None = None, resume: bool = False, keep: int = 2,
                 seed: int = 0, signals: Iterable["str | int"] = ("USR1",)) -> None:
        # DCP runs over the default group: every rank
        super().__init__(directory, every, comm=runtime.init().comm, keep=keep, seed=seed,
                         signals=signals, resume=resume)
        self.grid = grid
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise InvalidArgumentError(f"optimizer is a {type(optimizer).__name__}: pass the "
                                       "torch optimizer itself (a DistributedOptimizer's "
                                       ".optimizer)", rank=self.comm.rank, op="checkpoint")
        self.model, self.optimizer, self.sampler = model, optimizer, sampler
        self.extra = extra if extra is not None else {}
        if resume and self.manager is not None:
            self._resume()

    def _layout(self) -> dict[str, int]:
        return {"stages": self.grid.stages, "replicas": self.grid.replicas}

    def _sharded(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """DCP's part (model and optimizer tensors) and the optimizer's other values."""
        optim = get_optimizer_state_dict(self.model, self.optimizer, options=_OPTIONS)
        tensors = {k: v for k, v in optim.items() if isinstance(v, torch.Tensor)}
        values = {k: v for k, v in optim.items() if not isinstance(v, torch.Tensor)}
        return {"model": self.model.state_dict(), "optim": tensors}, values

    # -- resume ------------------------------------------------------------------------
    def _resume(self) -> None:
        # A fresh optimizer gets zero state first (torch's get_optimizer_state_dict steps
        # it with lr=0), so DCP has tensors of the right shapes to fill.
        sharded, values = self._sharded()
        loaded = self.manager.load(sharded=sharded)
        if loaded is None:
            # back to the state of a fresh optimizer (the zero state above has step 1)
            self.optimizer.state.clear()
            self._no_checkpoint()
            return
        shared = loaded["shared"]
        self.model.load_state_dict(sharded["model"])
        missing = sorted(set(values) - set(shared["optim_values"]))
        if missing:
            raise InvalidArgumentError(f"the checkpoint has no optimizer values for "
                                       f"{missing[:3]}...: another model or optimizer?",
                                       rank=self.comm.rank, op="checkpoint load")
        set_optimizer_state_dict(self.model, self.optimizer, {
            **{k: shared["optim_values"][k] for k in values}, **sharded["optim"]},
            options=_OPTIONS)
        restore_extra(self.extra, shared["extra"])
        c = shared["counters"]
        self.step, self.epoch, self.position = c["step"], c["epoch"], c["position"]
        self.resumed_from = self.step
        exact = loaded["local"] is not None and shared["layout"] == self._layout()
        if exact:
            self._carry_saved = loaded["local"]["carry"]
            # restored once the resumed epoch's loader iterator exists (creating it draws
            # from torch's generator, as it did before the save)
            self._rng_pending = loaded["local"]["rng"]
        else:
            self._carry_saved = {n: t if self.comm.rank == 0 else torch.zeros_like(t)
                                 for n, t in shared["carry_sum"].items()}
            seed_everything(self.seed * 1_000_003 + self.step * 1009 + self.comm.rank)
        if self.comm.rank == 0:
            was = shared["layout"]
            how = "exact" if exact else (f"elastic: saved at {loaded.saved_size} ranks "
                                         f"({was['stages']} stages x {was['replicas']} "
                                         f"replicas), now {self.comm.size} "
                                         f"({self.grid.stages} x {self.grid.replicas})")
            print(f"resumed from {loaded['folder']} (step {self.step}, epoch {self.epoch}, "
                  f"global sample {self.position}; {how})", file=sys.stderr, flush=True)

    def consumers(self) -> int:
        """The sampler shards by replica: the D replicas take distinct samples."""
        return self.grid.replicas

    # -- saving ------------------------------------------------------------------------
    def save(self, carry: dict[str, torch.Tensor] | None = None) -> Path:
        """Collective over every rank: checkpoint now (between two steps)."""
        self._check_saving()
        sharded, values = self._sharded()
        everyone = self.comm.allgather_object(values)   # hyperparameters of every stage
        mine = {n: t.detach().cpu().clone() for n, t in (carry or {}).items()}
        summed = {n: collectives.allreduce(t.clone(), op="sum", comm=self.comm)
                  for n, t in mine.items()}
        shared = None
        if self.comm.rank == 0:
            shared = {"counters": {"step": self.step, "epoch": self.epoch,
                                   "position": self.position},
                      "layout": self._layout(), "extra": dict(self.extra),
                      "optim_values": {k: v for d in everyone for k, v in d.items()},
                      "carry_sum": summed}
        local = {"rng": rng_state(), "carry": mine}
        return self.manager.save(self.step, shared, local, sharded=sharded)
