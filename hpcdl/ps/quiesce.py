"""The server's side of a checkpoint: quiesce on SAVE, hand over its shard, restore.

A SAVE request from every worker, each sent after its last push was answered,
means every push is in and (``sync``/``ssp``) applied: the server checks that, copies
its state, answers SAVE to every worker and calls ``on_save`` (the collective write,
hpcdl/ps/checkpoint.py) from inside its loop, then serves on. A failure before the
answer ends the job through the error protocol (every worker learns which server);
one inside the write is reported by CheckpointManager on every rank alike.

A PUSH flagged "signalled" (or a signal on server 0 itself) makes server 0 pick the
step at which every worker checkpoints, sent as ``save_at`` in each reply: the workers
learn it without waiting for each other, which async and ssp must not do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

from . import protocol as P

__all__ = ["Quiesce"]


class Quiesce:
    """Mixed into :class:`~hpcdl.ps.server.Server` (uses its roles, plan, clocks, _fail)."""

    def shard_state(self, clock: int) -> dict[str, Any]:
        """Copies of everything this server needs to continue exactly at ``clock``."""
        return {"index": self.index, "clock": clock, "mode": self.mode,
                "pieces": [[p.name, p.start, p.stop, p.offset]
                           for p in self.plan.shards[self.index]],
                "params": np.array(self.params, copy=True),
                "state": {k: np.array(v, copy=True) for k, v in self.state.items()},
                "meta": dict(self.meta),
                "stats": {k: self.stats[k] for k in ("updates", "pushes", "pulls")}}

    def restore(self, params: np.ndarray, state: dict[str, np.ndarray], meta: dict[str, Any],
                clock: int, stats: dict[str, int], step: int) -> None:
        """Continue from a checkpoint: this shard's values and optimizer state (already
        re-split to this plan), the optimizer's counters, and every worker at ``clock``."""
        self.params[...] = params
        for name, arr in self.state.items():
            arr[...] = state[name]
        self.meta = dict(meta)
        self.stats.update(stats)
        self.stats["resumed_from_step"] = step
        self._reset_clocks(clock)

    def _on_signalled(self) -> None:
        """Server 0 picks the step every worker checkpoints at: one past the furthest
        worker, so each learns it from a reply before it gets there."""
        if self.index == 0 and not self.save_at:
            self.save_at = max(self.completed.values()) + 1

    def _on_save_request(self, w: int, clock: int, step: int, stop: int) -> None:
        me = f"server {self.index} (rank {self.roles.rank})"
        if self.on_save is None:
            self._fail(f"worker rank {w} asked for checkpoint {step}, but {me} serves without "
                       "a checkpoint handler (serve(on_save=...))")
        if clock != self.completed[w]:
            self._fail(f"worker rank {w} asked for a checkpoint at clock {clock}, but {me} has "
                       f"{self.completed[w]} pushes from it", culprit=w)
        self.save_requests[w] = (step, stop, clock)
        workers = self.roles.workers
        if len(self.save_requests) < len(workers):
            return                                  # the others are still on their way
        asks = set(self.save_requests.values())
        closed = [v for v in workers if self.done[v]]
        if len(asks) != 1 or closed:
            self._fail(f"{me}: the workers do not agree on the checkpoint (step, stop, clock) "
                       f"by rank: {self.save_requests}; closed already: {closed}")
        step, stop, clock = asks.pop()
        if self.incoming or self.acc or (self.mode != "async" and self.applied != clock):
            self._fail(f"{me}: not quiescent at checkpoint {step} (pushes in flight "
                       f"{len(self.incoming)}, clocks pending {sorted(self.acc)}, applied "
                       f"{self.applied} of {clock})")
        try:    # before answering: a failure here ends the job naming this server
            state = self.shard_state(clock)
        except Exception as exc:  # noqa: BLE001 - any cause, reported to every worker
            self._fail(f"{me} could not copy its shard for checkpoint {step}: "
                       f"{type(exc).__name__}: {exc}")
        for v in workers:
            self.comm.Send([P.header(P.SAVE, clock, step, 0, self.roles.rank), MPI.INT64_T], v,
                           P.TAG_SAVED)
        self.on_save(step, state)                   # collective with the workers
        self.save_requests.clear()
        self.stats["checkpoints"] += 1
        if self.save_at and clock >= self.save_at:
            self.save_at = 0
        if stop:
            self.stopped_at = step

