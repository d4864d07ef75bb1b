"""Checkpoints of a P-Reduce run, taken at its full syncs.

    ck = PReduceCheckpoint(dir, every=100, resume=True, model=model, optimizer=opt,
                           stream=shard, extra={"history": history})
    session = hpcdl.PReduce(P, total_steps=..., sync_every=..., state=ck.session_state)
    for x, y in shard:
        ...local step...
        reply = avg()
        if reply.kind == "sync" and reply.reason == "every":
            ...evaluate...
            ck.at_sync(session, reply)       # collective: saves when due, or on SIGUSR1

Why only at a full sync: P-Reduce groups form by timing, so between two full
syncs the ranks hold different models, and no run is reproducible bit for bit
anyway. At a full sync every rank holds the same average and no group is open:
the model is saved once, and the controller's count of steps and its adapted
deadline (``PReduce.sync_state``) say exactly where the run stands.

``every`` counts steps over all ranks (the controller's count, the one that
ends epochs); a checkpoint is written at the first full sync at which at least
``every`` steps have passed since the last one ("rounded up to the next full
sync"), so ``every <= sync_every`` means one at every sync.

What is saved: the model (rank 0, replicated at the sync), every rank's own
optimizer state (Adam's moments differ per rank: each averaged the model but
stepped on its own gradients), every rank's RNG states and data position
(``stream.state_dict()``), the controller's state, and ``extra``.

Resume at the same rank count: everything as saved. At another rank count
(elastic): the model as saved; new rank ``r`` takes saved rank ``r % N``'s
optimizer state and data pass counter (and starts that pass from its
beginning: the shards differ at another rank count); RNGs are reseeded from
(seed, steps, rank).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable

import torch

from ..checkpoint import CheckpointError, params_sha256, rng_state, set_rng_state
from ..checkpoint.loop import CheckpointBase
from ..checkpoint.state import restore_extra, seed_everything
from ..errors import InvalidArgumentError
from ..runtime import default_comm
from .messages import Reply

__all__ = ["PReduceCheckpoint"]


class PReduceCheckpoint(CheckpointBase):
    """Saves a P-Reduce training run at its full syncs and resumes it (module docstring)."""

    def __init__(self, directory: "str | Path | None", every: int, *, model: torch.nn.Module,
                 optimizer: Any, stream: Any = None, extra: dict[str, Any] | None = None,
                 resume: bool = False, keep: int = 2, seed: int = 0,
                 signals: Iterable["str | int"] = ("USR1",), comm: Any = None) -> None:
        super().__init__(directory, every, comm=default_comm(comm), keep=keep, seed=seed,
                         signals=signals, resume=resume)
        self.model, self.optimizer, self.stream = model, optimizer, stream
        self.extra = extra if extra is not None else {}
        self.session_state: dict[str, Any] | None = None   # for PReduce(state=)
        self.stats: dict[str, int] = {}    # counts the saved run had (groups, forced syncs)
        self.last_step = 0
        if resume and self.manager is not None:
            self._resume()

    # -- resume ------------------------------------------------------------------------
    def _resume(self) -> None:
        loaded = self.manager.load()
        if loaded is None:
            self._no_checkpoint()
            return
        shared = loaded["shared"]
        self.model.load_state_dict(shared["model"])
        loaded_hash = params_sha256(self.model)
        if loaded_hash != shared["params_sha256"]:
            # the files matched their checksums, so this is a loading bug, not a bad disk
            raise CheckpointError(f"{loaded['folder']}: the model loaded hashes to "
                                  f"{loaded_hash}, it was saved as {shared['params_sha256']}",
                                  rank=self.comm.rank, op="checkpoint load")
        restore_extra(self.extra, shared["extra"])
        self.session_state = dict(shared["session"])
        self.stats = dict(shared["stats"])
        self.resumed_from = self.last_step = int(self.session_state["steps"])
        exact = loaded["local"] is not None
        mine = loaded["local"] if exact else loaded.local_of(self.comm.rank %
                                                               loaded.saved_size)
        self.optimizer.load_state_dict(mine["optimizer"])
        if self.stream is not None:
            # elastic: the saved rank's pass, from its start (this rank's shard differs)
            self.stream.load_state_dict(mine["stream"] if exact else
                                        {**mine["stream"], "taken": 0})
        if exact:
            set_rng_state(mine["rng"])
        else:
            seed_everything(self.seed * 1_000_003 + self.last_step * 1009 + self.comm.rank)
        if self.comm.rank == 0:
            how = ("exact" if exact else f"elastic: saved at {loaded.saved_size} ranks, now "
                   f"{self.comm.size}; rank r took saved rank r % {loaded.saved_size}'s "
                   "optimizer state")
            print(f"resumed from {loaded['folder']} (step {self.last_step}, params sha256 "
                  f"{loaded_hash}; {how})", file=sys.stderr, flush=True)

    # -- at each full sync ---------------------------------------------------------------
    def at_sync(self, session: Any, reply: Reply) -> bool:
        """Collective, at a periodic full sync (every rank holds the same model): save
        when ``every`` steps have passed since the last checkpoint; on a signal, save and
        exit with status 0. Returns whether it saved."""
        if self.manager is None:
            return False
        saved = False
        if self.every and reply.step - self.last_step >= self.every:
            self.save(session, reply)
            saved = True
        if self.signal is not None and self.signal.agreed(self.comm):
            if not saved:
                self.save(session, reply)
            self._exit(f"at step {reply.step} on {self.signal.name}")
        return saved

    def save(self, session: Any, reply: Reply) -> Path:
        """Collective: checkpoint now. Only right after a full sync's reply (kind
        ``sync``), where every rank holds the same model and the controller stands still."""
        self._check_saving()
        if reply.kind != "sync":
            raise InvalidArgumentError(f"a P-Reduce checkpoint is taken at a full sync, not "
                                       f"after a {reply.kind!r} reply", rank=self.comm.rank,
                                       op="checkpoint save")
        shared = None
        if self.comm.rank == 0:
            state = session.sync_state()
            if state is None or state["steps"] != reply.step:
                raise InvalidArgumentError(f"the controller's last full sync is {state}, not "
                                           f"the one at step {reply.step}",
                                           rank=self.comm.rank, op="checkpoint save")
            stats = self._stats(session.controller.log[:state["replies"]])
            shared = {"model": self.model.state_dict(), "extra": dict(self.extra),
                      "params_sha256": params_sha256(self.model),   # checked on resume
                      "session": {"steps": state["steps"], "deadline": state["deadline"]},
                      "stats": stats}
        local = {"optimizer": self.optimizer.state_dict(), "rng": rng_state(),
                 "stream": self.stream.state_dict() if self.stream is not None else None}
        folder = self.manager.save(reply.step, shared, local)
        self.last_step = reply.step
        if self.comm.rank == 0:
            print(f"checkpoint {folder} (step {reply.step}, params sha256 "
                  f"{shared['params_sha256']})", file=sys.stderr, flush=True)
        return folder

    def stats_since_start(self, session: Any) -> dict[str, int]:
        """Groups and forced syncs over the whole run, resumed parts included (rank 0)."""
        return self._stats(session.controller.log if session.controller is not None else [])

    def _stats(self, log: list[Reply]) -> dict[str, int]:
        # the controller's log covers this process's part of the run; the saved counts
        # cover the parts before it
        return {"groups": self.stats.get("groups", 0) + sum(r.kind == "group" for r in log),
                "forced_syncs": self.stats.get("forced_syncs", 0)
                + sum(r.reason == "connect" for r in log)}

    def summary(self) -> dict[str, Any]:
        """What the main job adds to metrics.json (checkpoints are taken at full syncs)."""
        out = super().summary()
        if self.manager is not None:
            out["at"] = "full syncs"
        return out
