"""What every checkpointed training loop shares: the manager, the signal, the counters,
the resumed epoch, and the batches from the saved global sample position.

:class:`CheckpointBase` is the part every checkpoint driver has (P-Reduce's too, which
saves at full syncs and has no batches of its own).

:class:`~hpcdl.checkpoint.TrainingCheckpoint` (data parallel), the pipeline's and the
parameter server's checkpoints subclass :class:`CheckpointLoop`; each says how many
ranks take distinct data (:meth:`CheckpointLoop.consumers`), what a save writes
(``save``) and, where it differs, what happens after a step (``_after_step``).
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from ..errors import InvalidArgumentError
from .manager import CheckpointManager
from .signals import SignalFlag
from .state import set_rng_state

__all__ = ["CheckpointBase", "CheckpointLoop"]


class CheckpointBase:
    """What every checkpoint driver holds: the manager (None without a folder), the
    save interval, the signal to checkpoint on, and the counts the main job reports."""

    def __init__(self, directory: "str | Path | None", every: int, *, comm: Any, keep: int = 2,
                 seed: int = 0, signals: Iterable["str | int"] = ("USR1",),
                 resume: bool = False) -> None:
        self.comm = comm
        if int(every) < 0:
            raise InvalidArgumentError(f"every={every}: use N >= 0 steps (0: only when "
                                       "signalled)", rank=comm.rank, op="checkpoint")
        # directory=None: the loop runs unchanged and nothing is saved (no --checkpoint-dir).
        self.manager = (CheckpointManager(directory, keep=keep, comm=comm)
                        if directory is not None else None)
        if self.manager is not None and not resume:
            # A new run never saves among an earlier run's checkpoints: pruning would mix
            # the two, and a later resume (a SLURM requeue) could load the other run's.
            self.manager.refuse_other_run("resume=True (--resume in the main job)")
        self.every = int(every) if self.manager is not None else 0
        self.seed = int(seed)
        self.signal = SignalFlag(signals) if signals and self.manager is not None else None
        self.resumed_from: int | None = None

    def _check_saving(self) -> None:
        """Refuse a save without a checkpoint folder (``save()`` called by hand)."""
        if self.manager is None:
            raise InvalidArgumentError("no checkpoint directory was given (directory=None)",
                                       rank=self.comm.rank, size=self.comm.size,
                                       op="checkpoint save")

    def _exit(self, when: str) -> None:
        if self.comm.rank == 0:
            print(f"checkpointed {when}; exiting so the job can be requeued and resumed",
                  file=sys.stderr, flush=True)
        raise SystemExit(0)

    def _no_checkpoint(self) -> None:
        if self.comm.rank == 0:
            print(f"no checkpoint in {self.manager.directory}: starting from scratch",
                  file=sys.stderr, flush=True)

    def summary(self) -> dict[str, Any]:
        """What the main job adds to metrics.json."""
        if self.manager is None:
            return {"saves": 0}
        return {"saves": self.manager.saves, "save_seconds": round(self.manager.save_seconds, 4),
                "resumed_from_step": self.resumed_from, "every_steps": self.every,
                "directory": str(self.manager.directory)}


class CheckpointLoop(CheckpointBase, ABC):
    """The loop side of a checkpoint: ``epochs`` and ``batches`` (see TrainingCheckpoint)."""

    def __init__(self, directory: "str | Path | None", every: int, *, comm: Any, keep: int = 2,
                 seed: int = 0, signals: Iterable["str | int"] = ("USR1",),
                 resume: bool = False) -> None:
        super().__init__(directory, every, comm=comm, keep=keep, seed=seed, signals=signals,
                         resume=resume)
        self.sampler: Any = None  # set by the subclass: the loop's DistributedSampler
        self.step = 0            # optimizer steps done, over the whole run
        self.epoch = 1           # the epoch in progress
        self.position = 0        # global samples of this epoch consumed
        self._carry_saved: dict[str, torch.Tensor] = {}
        self._rng_pending: dict[str, Any] | None = None

    # -- what subclasses define --------------------------------------------------------
    @abstractmethod
    def save(self, carry: dict[str, torch.Tensor] | None = None) -> Path:
        """Collective: checkpoint now, between two steps."""

    def consumers(self) -> int:
        """How many ranks take distinct samples (the sampler's replicas)."""
        return self.comm.size

    def _after_step(self, carry: dict[str, torch.Tensor]) -> None:
        """Save every ``every`` steps; on a signal every rank agreed on, save and exit 0.
        Once per step: a signal at a periodic save's step exits after that save (a second
        save of the same step would replace the first inside SLURM's grace window)."""
        signalled = self.signal is not None and self.signal.agreed(self.comm)
        if signalled or (self.every and self.step % self.every == 0):
            self.save(carry)
        if signalled:
            self._exit(f"at step {self.step} on {self.signal.name}")

    # -- the loop ----------------------------------------------------------------------
    def epochs(self, first: int, stop: int) -> Iterator[int]:
        """``range(first, stop)``, starting at the resumed epoch."""
        for epoch in range(max(first, self.epoch), stop):
            if epoch != self.epoch:
                self.epoch, self.position = epoch, 0
            yield epoch

    def batches(self, loader: Any, carry: dict[str, torch.Tensor] | None = None) -> Iterator[Any]:
        """The loader's batches from the saved position; after each one (the loop body's
        step) :meth:`_after_step` saves when due.

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
        consumers = self.consumers()
        iterator = iter(loader)
        if self._rng_pending is not None:
            # restored once the epoch's iterator exists: creating it may draw from the
            # global generator, as it did before the save
            set_rng_state(self._rng_pending)
            self._rng_pending = None
        done = 0
        for item in iterator:
            yield item
            done += 1
            self.step += 1
            took = done * batch if per_rank is None else min(done * batch, per_rank)
            self.position = start + took * consumers
            self._after_step(carry)
