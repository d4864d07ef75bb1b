"""The training-loop side of checkpointing: what to save, when, and how to resume.

    ck = TrainingCheckpoint(dir, every=50, resume=True, model=model, optimizer=opt,
                            sampler=sampler, scaler=scaler, extra={"history": history})
    for epoch in ck.epochs(1, epochs + 1):
        sampler.set_epoch(epoch)
        running = torch.zeros(2)
        for x, y in ck.batches(loader, carry={"running": running}):
            ...one optimizer step...

``batches`` counts optimizer steps, saves every ``every`` of them (and when a
watched signal arrives, then exits), and on resume starts the interrupted epoch
at the saved *global* sample position: the sampler hands the rest of that
epoch's global order out over however many ranks run now (the same shards as
before at the same rank count, re-sharded at another). Replicated state (model,
optimizer, scheduler, GradScaler, counters, ``extra``) is saved once by rank 0;
per-rank state (RNG states, a compressor's error-feedback residuals) by every
rank. After a resume at the same rank count every RNG continues exactly; at
another rank count the RNGs are reseeded from (seed, step, rank).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable

import torch

from .. import collectives

from ..runtime import default_comm
from .loop import CheckpointLoop
from .state import component_state, load_component_state, restore_extra, rng_state, \
    seed_everything

__all__ = ["TrainingCheckpoint"]


class TrainingCheckpoint(CheckpointLoop):
    """Saves and resumes a data-parallel training loop (see the module docstring)."""

    def __init__(self, directory: "str | Path | None", every: int, *, model: torch.nn.Module,
                 optimizer: Any, sampler: Any = None, scheduler: Any = None, scaler: Any = None,
                 compression: Any = None, extra: dict[str, Any] | None = None,
                 resume: bool = False, keep: int = 2, seed: int = 0,
                 signals: Iterable["str | int"] = ("USR1",), comm: Any = None) -> None:
        super().__init__(directory, every, comm=default_comm(comm), keep=keep, seed=seed,
                         signals=signals, resume=resume)
        self.parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler,
                      "scaler": scaler}
        self.compression = compression
        self.sampler = sampler
        self.extra = extra if extra is not None else {}
        if resume and self.manager is not None:
            self._resume()

    # -- resume ------------------------------------------------------------------------
    def _resume(self) -> None:
        loaded = self.manager.load()
        if loaded is None:
            self._no_checkpoint()
            return
        shared = loaded["shared"]
        for name, obj in self.parts.items():
            load_component_state(obj, shared["parts"].get(name))
        restore_extra(self.extra, shared["extra"])
        c = shared["counters"]
        self.step, self.epoch, self.position = c["step"], c["epoch"], c["position"]
        self.resumed_from = self.step
        local = loaded["local"]
        if local is not None:
            self._carry_saved = local["carry"]
        else:
            self._carry_saved = {n: t if self.comm.rank == 0 else torch.zeros_like(t)
                                 for n, t in shared["carry_sum"].items()}
        if local is not None:
            load_component_state(self.compression, local.get("compression"))
            # Restored when the resumed epoch's loader iterator exists: creating it may
            # draw from the global generator, as it did before the save.
            self._rng_pending = local["rng"]
        else:
            seed_everything(self.seed * 1_000_003 + self.step * 1009 + self.comm.rank)
        if self.comm.rank == 0:
            how = ("exact" if local is not None else
                   f"elastic: saved at {loaded.saved_size} ranks, now {self.comm.size}")
            print(f"resumed from {loaded['folder']} (step {self.step}, epoch {self.epoch}, "
                  f"global sample {self.position}; {how})", file=sys.stderr, flush=True)

    # -- saving ------------------------------------------------------------------------
    def save(self, carry: dict[str, torch.Tensor] | None = None) -> Path:
        """Collective: checkpoint now (called by :meth:`batches`; callable by hand)."""
        self._check_saving()
        shared = None
        if self.comm.rank == 0:
            shared = {"parts": {n: component_state(o) for n, o in self.parts.items()},
                      "extra": dict(self.extra),
                      "counters": {"step": self.step, "epoch": self.epoch,
                                   "position": self.position}}
        mine = {n: t.detach().cpu().clone() for n, t in (carry or {}).items()}
        summed = {n: collectives.allreduce(t.clone(), op="sum", comm=self.comm)
                  for n, t in mine.items()}
        if shared is not None:
            shared["carry_sum"] = summed
        local = {"rng": rng_state(), "compression": component_state(self.compression),
                 "carry": mine}
        return self.manager.save(self.step, shared, local)
