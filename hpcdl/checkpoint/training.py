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
from typing import Any, Iterable, Iterator

import torch

import hpcdl

from ..errors import InvalidArgumentError
from ..runtime import default_comm
from .manager import CheckpointManager
from .signals import SignalFlag
from .state import component_state, load_component_state, rng_state, seed_everything, \
    set_rng_state

__all__ = ["TrainingCheckpoint"]


class TrainingCheckpoint:
    """Saves and resumes a data-parallel training loop (see the module docstring)."""

    def __init__(self, directory: "str | Path | None", every: int, *, model: torch.nn.Module,
                 optimizer: Any, sampler: Any = None, scheduler: Any = None, scaler: Any = None,
                 compression: Any = None, extra: dict[str, Any] | None = None,
                 resume: bool = False, keep: int = 2, seed: int = 0,
                 signals: Iterable["str | int"] = ("USR1",), comm: Any = None) -> None:
        self.comm = default_comm(comm)
        # directory=None: the loop runs unchanged and nothing is saved (no --checkpoint-dir).
        self.manager = (CheckpointManager(directory, keep=keep, comm=self.comm)
                        if directory is not None else None)
        self.every = int(every) if self.manager is not None else 0
        self.parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler,
                      "scaler": scaler}
        self.compression = compression
        self.sampler = sampler
        self.extra = extra if extra is not None else {}
        self.seed = int(seed)
        self.signal = SignalFlag(signals) if signals and self.manager is not None else None
        self.step = 0            # optimizer steps done, over the whole run
        self.epoch = 1           # the epoch in progress
        self.position = 0        # global samples of this epoch consumed
        self.resumed_from: int | None = None
        self._carry_saved: dict[str, torch.Tensor] = {}
        self._rng_pending: dict[str, Any] | None = None
        if resume and self.manager is not None:
            self._resume()

    # -- resume ------------------------------------------------------------------------
    def _resume(self) -> None:
        loaded = self.manager.load()
        if loaded is None:
            if self.comm.rank == 0:
                print(f"no checkpoint in {self.manager.directory}: starting from scratch",
                      file=sys.stderr, flush=True)
            return
        shared = loaded["shared"]
        for name, obj in self.parts.items():
            load_component_state(obj, shared["parts"].get(name))
        for name, value in shared["extra"].items():
            target = self.extra.get(name)
            if isinstance(target, list):
                target[:] = value
            elif isinstance(target, dict):
                target.clear()
                target.update(value)
            elif isinstance(target, torch.Tensor):
                target.copy_(value)
            else:
                self.extra[name] = value
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

    # -- the loop ----------------------------------------------------------------------
    def epochs(self, first: int, stop: int) -> Iterator[int]:
        """``range(first, stop)``, starting at the resumed epoch."""
        for epoch in range(max(first, self.epoch), stop):
            if epoch != self.epoch:
                self.epoch, self.position = epoch, 0
            yield epoch

    def batches(self, loader: Any, carry: dict[str, torch.Tensor] | None = None) -> Iterator[Any]:
        """The loader's batches from the saved position; saves after every ``every`` steps.

        ``carry``: per-rank tensors the loop accumulates over the epoch and sums over
        ranks at its end (a running loss). They are saved with the checkpoint and
        restored in place on resume: each rank's own at the same rank count, else
        the sum over the old ranks on rank 0 and zeros elsewhere (same final sum).
        """
        carry = carry or {}
        for name, t in carry.items():
            if name in self._carry_saved:
                t.copy_(self._carry_saved[name])
        self._carry_saved = {}
        start = self.position
        if self.sampler is not None and hasattr(self.sampler, "set_start"):
            self.sampler.set_start(start)
        per_rank = len(self.sampler) if self.sampler is not None else None
        batch = getattr(loader, "batch_size", None) or 1
        iterator = iter(loader)
        if self._rng_pending is not None:
            set_rng_state(self._rng_pending)
            self._rng_pending = None
        done = 0
        for item in iterator:
            yield item
            done += 1
            self.step += 1
            took = done * batch if per_rank is None else min(done * batch, per_rank)
            self.position = start + took * self.comm.size
            if self.every and self.step % self.every == 0:
                self.save(carry)
            if self.signal is not None and self.signal.agreed(self.comm):
                self.save(carry)
                if self.comm.rank == 0:
                    print(f"checkpointed at step {self.step} on {self.signal.name}; exiting "
                          "so the job can be requeued and resumed", file=sys.stderr, flush=True)
                raise SystemExit(0)

    # -- saving ------------------------------------------------------------------------
    def save(self, carry: dict[str, torch.Tensor] | None = None) -> Path:
        """Collective: checkpoint now (called by :meth:`batches`; callable by hand)."""
        if self.manager is None:
            raise InvalidArgumentError("no checkpoint directory was given", rank=self.comm.rank,
                                       op="checkpoint save")
        shared = None
        if self.comm.rank == 0:
            shared = {"parts": {n: component_state(o) for n, o in self.parts.items()},
                      "extra": dict(self.extra),
                      "counters": {"step": self.step, "epoch": self.epoch,
                                   "position": self.position}}
        mine = {n: t.detach().cpu().clone() for n, t in (carry or {}).items()}
        summed = {n: hpcdl.allreduce(t.clone(), op="sum", comm=self.comm)
                  for n, t in mine.items()}
        if shared is not None:
            shared["carry_sum"] = summed
        local = {"rng": rng_state(), "compression": component_state(self.compression),
                 "carry": mine}
        return self.manager.save(self.step, shared, local)

    def summary(self) -> dict[str, Any]:
        """What the main job adds to metrics.json."""
        if self.manager is None:
            return {"saves": 0}
        return {"saves": self.manager.saves, "save_seconds": round(self.manager.save_seconds, 4),
                "resumed_from_step": self.resumed_from, "every_steps": self.every,
                "directory": str(self.manager.directory)}
