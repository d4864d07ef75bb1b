"""A server's handling of a dead peer under ULFM (``HPCDL_FT=1``; docs/fault-tolerance.md).

A dead worker shows up as an MPI error of the receive from ``MPI.ANY_SOURCE`` the
server loop polls with (or of a request to or from it). With ``on_failure="shrink"``
the server drops it: it counts as done from the clock it had completed (its pushes
that arrived stay in; sync/ssp then wait only for the living workers, and async
scales each push by the living count), replies to it are abandoned, and the loop goes
on. With ``on_failure="abort"`` the job ends naming it. A dead *server* always ends the
job: its shard of the parameters and of the optimizer state exists only there (shards
are not replicated).
"""

from __future__ import annotations

import time
from typing import Any

from mpi4py import MPI

from ..ulfm import ack_failed, is_process_failure

__all__ = ["LostWorkers"]


class LostWorkers:
    """Mixed into :class:`~hpcdl.ps.server.Server` (uses its roles, clocks and _fail)."""

    on_failure = "abort"

    def _living(self) -> list[int]:
        return [w for w in self.roles.workers if w not in self.lost]

    def _on_peer_failure(self, exc: BaseException) -> None:
        """``exc`` came from an MPI call of the loop: drop the dead workers it stands for,
        or end the job naming them; anything else is re-raised."""
        if not is_process_failure(exc):
            raise exc
        dead = ack_failed(self.comm)
        me = f"server {self.index} (rank {self.roles.rank})"
        servers = [r for r in dead if r in self.roles.servers]
        if servers:
            self._fail(f"{me}: server rank(s) {servers} died; each server holds the only copy "
                       "of its shard of the parameters and optimizer state (shards are not "
                       "replicated), so the job cannot go on")
        new = [w for w in dead if w in self.roles.workers and w not in self.lost]
        if not new:
            return    # known already (a late error of a request to it)
        if self.on_failure != "shrink":
            self._fail(f"{me}: worker rank(s) {new} died (process failure); run with "
                       "--on-failure shrink (on_failure='shrink') to go on without them",
                       culprit=new[0])
        for w in new:
            self._drop(w)
        if self.mode != "async":
            self._advance()

    def _drop(self, w: int) -> None:
        self.lost[w] = self.completed[w]
        # detected/resumed: wall clock (s) of noticing the death and of the next update
        self.stats["lost_workers"].append({"rank": w, "clock": self.completed[w],
                                           "detected": time.time(), "resumed": None})
        self.done[w] = True
        self.waiting.pop(w, None)
        keep = []
        for item in self.incoming:     # a push whose payload will never arrive
            if item[1] == w:
                try:
                    item[0].Cancel()
                except MPI.Exception:
                    pass
            else:
                keep.append(item)
        self.incoming = keep

    def _note_resumed(self) -> None:
        """An update was applied: the training goes on after each loss not yet marked."""
        for entry in self.stats["lost_workers"]:
            if entry["resumed"] is None:
                entry["resumed"] = time.time()

    def _send_quietly(self, buf: Any, dest: int, tag: int) -> None:
        """A blocking send that gives up silently on a dead destination (error reports)."""
        try:
            self.comm.Send(buf, dest, tag)
        except MPI.Exception as exc:
            if not is_process_failure(exc):
                raise
