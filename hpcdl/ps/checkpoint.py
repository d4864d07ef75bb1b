"""Checkpoint and resume a parameter-server job: the servers' shards and clocks, the
workers' place in the data.

    ck = PSCheckpoint("ck", every=50, resume=True, comm=ctx.comm)  # every rank, before setup
    ps = hpcdl.torch.ParameterServer(model, opt, mode="sync", ...)
    ck.attach(ps.ps, sampler=sampler, extra={"history": history})
    if ck.is_server:
        stats = ck.serve()                 # serves, and saves its shard when asked
    else:
        for epoch in ck.epochs(1, epochs + 1):
            sampler.set_epoch(epoch)
            for x, y in ck.batches(loader, carry={"running": running}):
                ...; ps.step()            # ck saves after every 50th push
        ps.close()

One :class:`~hpcdl.checkpoint.CheckpointManager` over the whole job (servers and
workers are ranks of the same communicator): ``shared.pt`` (world rank 0, a worker)
holds the layout, the counters (step, epoch, global sample position, the clock) and
``extra``; ``rank-R.pt`` holds a worker's RNG states and running sums, or a server's
shard: its pieces (parameter name and element range), parameters, optimizer state
(Adam moments, momentum), optimizer step count and counters. At a save every worker
asks every server (SAVE, quiesce.py) after its last push was answered, so every push
is applied before any server copies its shard.

Resume: at the same rank count and roles every rank reads its own file (exact). At
another rank or server count each server rebuilds its new shard from the saved
servers' pieces by parameter name and element range (``ShardPlan`` of the new job),
and the sampler re-shards the rest of the epoch over the new workers.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from .. import collectives

from ..checkpoint import rng_state
from ..checkpoint.loop import CheckpointLoop
from ..checkpoint.state import restore_extra, seed_everything
from ..errors import InvalidArgumentError, MismatchError
from ..runtime import default_comm
from .protocol import PSError

__all__ = ["PSCheckpoint", "rebuild_shard"]


class PSCheckpoint(CheckpointLoop):
    """Checkpoints of a parameter-server job (see the module docstring)."""

    def __init__(self, directory: "str | Path | None", every: int, *, resume: bool = False,
                 keep: int = 2, seed: int = 0, signals: Iterable["str | int"] = ("USR1",),
                 comm: Any = None) -> None:
        # Servers catch the signal too: SIGUSR1's default action would kill them.
        super().__init__(directory, every, comm=default_comm(comm), keep=keep, seed=seed,
                         signals=signals, resume=resume)
        self.exact = False
        self.ps: Any = None
        # Collective, and before the parameter server starts: workers wait inside setup()
        # for the servers' first answer, which comes only after the shards are restored.
        self.loaded = self.manager.load() if resume and self.manager is not None else None
        if resume and self.loaded is None and self.manager is not None:
            self._no_checkpoint()

    def _error(self, message: str, cls: type = InvalidArgumentError) -> Exception:
        return cls(message, rank=self.comm.rank, size=self.comm.size, op="ps.checkpoint")

    @property
    def is_server(self) -> bool:
        return self.ps.is_server

    # -- resume ------------------------------------------------------------------------
    def attach(self, ps: Any, sampler: Any = None,
               extra: dict[str, Any] | None = None) -> None:
        """Bind to this rank's :class:`Server` or :class:`Worker` (from ``hpcdl.ps.setup``)
        and, after a resume, restore its state. Call on every rank before serving/training."""
        self.ps, self.sampler = ps, sampler
        self.extra = extra if extra is not None else {}
        roles = ps.roles
        if self.manager is not None and (roles.size != self.comm.size
                                         or 0 not in roles.workers):
            raise self._error(f"the checkpoint needs the parameter server on the same "
                              f"{self.comm.size} ranks, with rank 0 a worker (servers: "
                              f"{list(roles.servers)} of {roles.size})")
        if self.loaded is None:
            return
        shared = self.loaded["shared"]
        layout = shared.get("ps") if isinstance(shared, dict) else None
        if layout is None:
            raise self._error(f"{self.loaded['folder']} is not a parameter-server checkpoint "
                              "(written by another --mode?)")
        plan = ps.plan
        mine = {"names": list(plan.names), "shapes": [list(s) for s in plan.shapes],
                "dtype": plan.dtype.name}
        theirs = {k: layout[k] for k in mine}
        if theirs != mine:
            raise self._error(f"{self.loaded['folder']} holds another model: {theirs}, this "
                              f"job serves {mine}", MismatchError)
        c = shared["counters"]
        self.step, self.epoch, self.position = c["step"], c["epoch"], c["position"]
        self.resumed_from = self.step
        self.exact = (self.loaded.saved_size == self.comm.size
                      and list(layout["servers"]) == list(roles.servers))
        local = self.loaded["local"] if self.exact else None
        if ps.is_server:
            self._restore_server(layout, c["clock"])
        else:
            ps.clock = int(c["clock"])
            restore_extra(self.extra, shared["extra"])
            if local is not None:
                self._carry_saved = local["carry"]
                self._rng_pending = local["rng"]   # set once the epoch's iterator exists
            else:
                first = roles.rank == roles.workers[0]
                self._carry_saved = {n: t if first else torch.zeros_like(t)
                                     for n, t in shared["carry_sum"].items()}
                seed_everything(self.seed * 1_000_003 + self.step * 1009 + roles.index)
        if self.comm.rank == 0:
            how = ("exact" if self.exact else
                   f"elastic: saved at {self.loaded.saved_size} ranks with "
                   f"{len(layout['servers'])} server(s), now {self.comm.size} with "
                   f"{len(roles.servers)}")
            print(f"resumed from {self.loaded['folder']} (step {self.step}, epoch {self.epoch}, "
                  f"global sample {self.position}, clock {c['clock']}; {how})",
                  file=sys.stderr, flush=True)

    def _restore_server(self, layout: dict[str, Any], clock: int) -> None:
        server = self.ps
        saved = [self.loaded["local"] if self.exact and r == self.comm.rank
                 else self.loaded.local_of(r) for r in layout["servers"]]
        for r, st in zip(layout["servers"], saved):
            if st.get("role") != "server" or int(st["clock"]) != int(clock):
                raise self._error(f"{self.loaded['folder']}: rank {r}'s file is not a server "
                                  f"shard at clock {clock}")
        want = set(server.state)
        have = set(saved[0]["state"])
        if want != have:
            raise self._error(f"the checkpoint holds optimizer state {sorted(have)}, this "
                              f"server's optimizer keeps {sorted(want)} (another optimizer?)")
        steps = {int(st["meta"].get("steps", 0)) for st in saved}
        if len(steps) != 1:
            raise self._error(f"the saved servers applied different step counts {steps}")
        params, state = rebuild_shard(server.plan, server.index, saved, self._error)
        server.restore(params, state, saved[0]["meta"], int(clock), saved[0]["stats"],
                       self.step)

    # -- serving ------------------------------------------------------------------------
    def serve(self) -> dict[str, Any]:
        """Servers: serve, saving this shard whenever the workers checkpoint. Exits the
        process (status 0) when a signalled checkpoint asked the job to stop."""
        stats = self.ps.serve(on_save=self._save_shard if self.manager is not None else None,
                              signal=self.signal)
        if self.ps.stopped_at is not None:
            raise SystemExit(0)
        return stats

    def _save_shard(self, step: int, st: dict[str, Any]) -> None:
        local = {**st, "role": "server",
                 "params": torch.from_numpy(st["params"]),
                 "state": {k: torch.from_numpy(v) for k, v in st["state"].items()}}
        self.step = step
        self.manager.save(step, None, local)

    # -- the workers' loop ------------------------------------------------------------
    def consumers(self) -> int:
        """The workers take distinct samples; the servers take none."""
        return self.ps.roles.group.size

    def _after_step(self, carry: dict[str, torch.Tensor]) -> None:
        """After each push: save every ``every`` steps, and at the step server 0 chose
        after a signal (then close the worker and exit with status 0). A signalled worker
        only flags its next push: the workers never wait on each other for it."""
        if self.signal is not None and self.signal.received is not None:
            self.ps.signalled = True           # flag the next push to server 0
        at, clock = self.ps.save_at, self.ps.clock
        if at and clock > at:
            raise PSError(f"missed the signalled checkpoint at clock {at} (now {clock})",
                          rank=self.comm.rank, size=self.comm.size, op="ps.checkpoint")
        stop = bool(at) and clock == at
        if stop or (self.every and self.step % self.every == 0):
            self.save(carry, stop)
        if stop:
            self.ps.close()
            why = self.signal.name if self.signal and self.signal.name else \
                "a signal to another rank"
            self._exit(f"at step {self.step} (clock {clock}, chosen by server 0) on {why}")

    def save(self, carry: dict[str, torch.Tensor] | None = None, stop: bool = False) -> Path:
        """Workers, all at the same step: quiesce the servers and write the checkpoint."""
        self._check_saving()
        mine = {n: t.detach().cpu().clone() for n, t in (carry or {}).items()}
        summed = {n: collectives.allreduce(t.clone(), op="sum", comm=self.ps.roles.group)
                  for n, t in mine.items()}
        self.ps.request_checkpoint(self.step, stop)
        shared = None
        if self.comm.rank == 0:
            plan, roles = self.ps.plan, self.ps.roles
            shared = {"ps": {"names": list(plan.names), "shapes": [list(s) for s in plan.shapes],
                             "dtype": plan.dtype.name, "servers": list(roles.servers),
                             "workers": list(roles.workers)},
                      "counters": {"step": self.step, "epoch": self.epoch,
                                   "position": self.position, "clock": self.ps.clock},
                      "extra": dict(self.extra), "carry_sum": summed}
        local = {"role": "worker", "rng": rng_state(), "carry": mine}
        return self.manager.save(self.step, shared, local)

    def summary(self) -> dict[str, Any]:
        """What the main job adds to metrics.json (and whether the resume was exact)."""
        out = super().summary()
        if self.manager is not None:
            out["exact"] = self.exact if self.resumed_from is not None else None
        return out


def rebuild_shard(plan: Any, index: int, saved: list[dict[str, Any]],
                  error: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Server ``index``'s flat shard of ``plan`` (parameters and each optimizer state
    array) from saved server shards, matched by parameter name and element range: the
    old and new plans may split the model differently (another server count)."""
    sizes = {n: int(np.prod(s)) for n, s in zip(plan.names, plan.shapes)}
    needed = {p.name for p in plan.shards[index]}
    kinds = ["params", *sorted(saved[0]["state"])]
    flat = {k: {n: np.empty(sizes[n], plan.dtype) for n in needed} for k in kinds}
    covered = {n: 0 for n in needed}
    for st in saved:
        arrays = {"params": st["params"], **st["state"]}
        for name, start, stop, offset in st["pieces"]:
            if name not in needed:
                continue
            for k in kinds:
                src = arrays[k][offset:offset + stop - start].numpy()
                flat[k][name][start:stop] = src
            covered[name] += stop - start
    short = {n: (covered[n], sizes[n]) for n in needed if covered[n] != sizes[n]}
    if short:
        raise error(f"the saved shards cover parameters (elements found, expected) {short}")
    out = {k: plan.pack(index, flat[k], np.empty(plan.shard_size(index), plan.dtype))
           for k in kinds}
    return out.pop("params"), out
