"""The server loop: receive pushes, apply the optimizer, answer with parameters.

One thread, no blocking call: each round tests the receives and sends in
flight, matches at most one new message with ``Improbe``, and sleeps a little
when there is nothing to do. So a slow worker never holds the server up (its
messages are simply not there yet), and a silent job ends with a
:class:`PSTimeoutError` that names the workers it was waiting for.

Consistency (``k`` = the clock a worker wants to start after pushing clock ``k - 1``):

* ``async``: each push is applied at once (the gradient divided by W, so one
  push per worker moves SGD as far as one synchronous step) and answered at once.
* ``ssp`` with bound ``s``: gradients of clock ``c`` are summed (in worker order,
  whatever order they arrive in, so runs repeat bit for bit); when every
  active worker has pushed clock ``c`` their mean is applied (one optimizer step
  per clock, as in sync). A worker may start clock ``k`` once clocks ``< k - s``
  are applied, i.e. the slowest worker has finished clock ``k - s - 1``.
* ``sync`` is ``ssp`` with ``s = 0``: every worker starts clock ``k`` from the
  same parameters, the mean of all clock ``k - 1`` gradients applied once.

Checkpoints: SAVE requests and the signalled flag are handled by :class:`Quiesce`
(quiesce.py), the files written by checkpoint.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from mpi4py import MPI

from ..watchdog import waiting
from . import protocol as P
from ..ulfm import is_process_failure, quiet_test
from .lost import LostWorkers
from .quiesce import Quiesce
from .roles import Roles
from .sharding import ShardPlan

__all__ = ["Server"]


@dataclass
class _Clock:
    """The pushes of one clock (sync/ssp): summed in worker order, whatever order they
    arrive in, so the float sum (hence the run) does not depend on arrival order."""

    total: np.ndarray | None = None   # the sum of the pushes added so far
    pushes: int = 0                   # pushes received (added or held)
    next: int = 0                     # index (in roles.workers) of the next push to add
    held: dict[int, np.ndarray] = field(default_factory=dict)  # arrived ahead of their turn


class Server(Quiesce, LostWorkers):
    is_server = True

    def __init__(self, roles: Roles, plan: ShardPlan, optimizer: Any, mode: str,
                 staleness: int, store: Any, timeout: float, compression: Any = None,
                 on_failure: str = "abort") -> None:
        self.roles, self.plan, self.optimizer = roles, plan, optimizer
        self.on_failure = on_failure    # a dead worker: "abort" the job or "shrink" (lost.py)
        self.lost: dict[int, int] = {}  # dead worker -> the clocks it had completed
        self.mode, self.staleness, self.store = mode, staleness, store
        self.timeout, self.compression = timeout, compression
        self.comm: MPI.Comm = roles.mpi
        self.index = roles.index
        n = plan.shard_size(self.index)
        self.size = n
        self.params = store.array("params", n, plan.dtype)
        self.state = {k: store.array(k, n, plan.dtype) for k in optimizer.state_names()}
        self.meta: dict[str, Any] = dict(store.meta) if store.reopened else {"steps": 0}
        init = np.empty(n, plan.dtype)
        req = self.comm.Irecv([init.view(np.uint8), MPI.BYTE], roles.first_worker, P.TAG_INIT)
        with waiting("ps.setup", self.comm, [roles.first_worker]):
            arrived = P.poll(req.Test, timeout)
        if not arrived:
            req.Cancel()
            raise P.PSTimeoutError(f"no initial parameters from worker rank "
                                   f"{roles.first_worker} within {timeout} s", rank=roles.rank,
                                   size=roles.size, op="ps.setup")
        if not store.reopened:     # a reopened disk store continues from its own values
            self.params[...] = init
        self.stats: dict[str, Any] = {"pushes": 0, "pulls": 0, "bytes_in": 0, "bytes_out": 0,
                                      "updates": 0, "max_clock_gap": 0,
                                      "resumed_from_step": self.meta["steps"]
                                      if store.reopened else None, "checkpoints": 0,
                                      "lost_workers": []}
        self.on_save: Any = None
        self._reset_clocks(0)

    def _reset_clocks(self, clock: int) -> None:
        """Every worker has pushed ``clock`` clocks and all of them are applied (a fresh
        start, or a checkpoint's quiesced state)."""
        workers = self.roles.workers
        self.completed = {w: clock for w in workers}
        self.done = {w: False for w in workers}
        self.waiting: dict[int, int] = {}
        self.acc: dict[int, _Clock] = {}
        self.applied = clock
        self.save_at = 0                 # the step all workers checkpoint at (0: none)
        self.save_requests: dict[int, tuple[int, int, int]] = {}
        self.stopped_at: int | None = None   # a checkpoint asked the job to stop

    # -- helpers ----------------------------------------------------------------
    def _fail(self, message: str, culprit: int | None = None) -> None:
        """Tell every worker (but the culprit) why the job ends, then raise here."""
        text = P.encode_text(message)
        for w in self.roles.workers:
            if w != culprit and w not in self.lost:
                self._send_quietly([P.header(0, rank=self.roles.rank), MPI.INT64_T], w,
                                   P.TAG_ERROR)
                self._send_quietly([text, MPI.BYTE], w, P.TAG_ERROR_TEXT)
        raise P.PSError(message, rank=self.roles.rank, size=self.roles.size, op="ps.serve")

    def _snapshot(self) -> np.ndarray:
        # Replies read a copy: MPI forbids touching a buffer that an Isend still reads,
        # and the optimizer writes the live array at the next push.
        if self._snap_version != self.stats["updates"]:
            self._snap = np.array(self.params, copy=True)
            self._snap_version = self.stats["updates"]
        return self._snap

    def _reply(self, worker: int, kind: int, gap: int) -> None:
        if worker in self.lost:
            return
        snap = self._snapshot()
        version = self.applied if self.mode != "async" else self.stats["updates"]
        hdr = P.header(kind, version, snap.size, 0, self.roles.rank, gap, self.save_at)
        try:
            self.outgoing.append((self.comm.Isend([hdr, MPI.INT64_T], worker, P.TAG_REPLY),
                                  hdr))
            self.outgoing.append((self.comm.Isend([snap.view(np.uint8), MPI.BYTE], worker,
                                                  P.TAG_REPLY_DATA), snap))
        except MPI.Exception as exc:   # the worker just died: the loop's probe will say so
            if not is_process_failure(exc):
                raise
        self.stats["bytes_out"] += snap.nbytes

    def _apply(self, grad: np.ndarray) -> None:
        self.optimizer.apply(self.params, grad, self.state, self.meta)
        self.stats["updates"] += 1
        if self.lost:
            self._note_resumed()

    def _required(self, clock: int) -> int:
        """Workers whose push of ``clock`` is needed: every active one, and the finished
        ones that got that far."""
        return sum(1 for w in self.roles.workers
                   if not self.done[w] or self.completed[w] > clock)

    def _sum_in_order(self, clock: int, slot: _Clock) -> None:
        """Add the held pushes of ``clock`` in worker order, as far as they have come."""
        workers = self.roles.workers
        while slot.next < len(workers):
            grad = slot.held.pop(slot.next, None)
            if grad is None:
                w = workers[slot.next]
                if not (self.done[w] and self.completed[w] <= clock):
                    return                     # still to come
            elif slot.total is None:
                slot.total = grad
            else:
                slot.total += grad
            slot.next += 1

    def _advance(self) -> None:
        """Apply every fully pushed clock in order, then release the workers it unblocks."""
        while self.applied in self.acc:
            slot = self.acc[self.applied]
            self._sum_in_order(self.applied, slot)
            if slot.pushes < self._required(self.applied):
                break
            del self.acc[self.applied]
            total = slot.total
            total /= slot.pushes
            self._apply(total)
            self.applied += 1
        for w, k in list(self.waiting.items()):
            if self.applied >= k - self.staleness:
                del self.waiting[w]
                gap = k - self.applied
                self.stats["max_clock_gap"] = max(self.stats["max_clock_gap"], gap)
                self._reply(w, P.PUSH, gap)

    # -- message handlers --------------------------------------------------------
    def _on_push(self, w: int, clock: int, grad: np.ndarray) -> None:
        if clock != self.completed[w]:
            self._fail(f"worker rank {w} pushed clock {clock}, expected {self.completed[w]} "
                       "(pushes out of order)", culprit=w)
        self.completed[w] = clock + 1
        self.stats["pushes"] += 1
        if self.mode == "async":
            grad *= 1.0 / len(self._living())   # a dead worker's share is the others'
            self._apply(grad)
            slowest = min(self.completed[v] for v in self.roles.workers if not self.done[v]) \
                if not all(self.done.values()) else clock + 1
            gap = clock + 1 - slowest
            self.stats["max_clock_gap"] = max(self.stats["max_clock_gap"], gap)
            self._reply(w, P.PUSH, gap)
            return
        slot = self.acc.setdefault(clock, _Clock())
        slot.pushes += 1
        slot.held[self.roles.workers.index(w)] = grad
        self._sum_in_order(clock, slot)
        self.waiting[w] = clock + 1
        self._advance()

    def _receive(self, msg: MPI.Message, status: MPI.Status) -> None:
        src, tag = status.Get_source(), status.Get_tag()
        if tag == P.TAG_ERROR:
            hdr = np.empty(P.HEADER_LEN, np.int64)
            msg.Recv([hdr, MPI.INT64_T])
            st = MPI.Status()
            self.comm.Probe(src, P.TAG_ERROR_TEXT, st)
            text = np.empty(st.Get_count(MPI.BYTE), np.uint8)
            self.comm.Recv([text, MPI.BYTE], src, P.TAG_ERROR_TEXT)
            self._fail(f"worker rank {src} failed: {P.decode_text(text)}", culprit=src)
        if tag != P.TAG_REQUEST:
            self._fail(f"unexpected message with tag {tag} from rank {src}")
        hdr = np.empty(P.HEADER_LEN, np.int64)
        msg.Recv([hdr, MPI.INT64_T])
        kind, clock, count = int(hdr[0]), int(hdr[1]), int(hdr[2])
        self.last_heard[src] = time.monotonic()
        if kind == P.PULL:
            self.stats["pulls"] += 1
            self._reply(src, P.PULL, 0)
        elif kind == P.DONE:
            self.done[src] = True
            self.waiting.pop(src, None)
            if self.mode != "async":
                self._advance()
        elif kind == P.SAVE:
            self._on_save_request(src, clock, count, int(hdr[5]))
        elif kind == P.HEARTBEAT:
            # The workers held for a reply may be waiting on this one: restart their
            # silence timers too.
            alive = P.header(P.HEARTBEAT, clock, 0, 0, src)
            for w in self.waiting:
                self.outgoing.append((self.comm.Isend([alive, MPI.INT64_T], w, P.TAG_ALIVE),
                                      alive))
        elif kind == P.PUSH:
            if hdr[5]:
                self._on_signalled()
            if count != self.size:
                self._fail(f"worker rank {src} pushed {count} elements to server {self.index}, "
                           f"which holds {self.size}", culprit=src)
            nbytes = self._wire_bytes(count, int(hdr[3]))
            buf = np.empty(nbytes, np.uint8)
            req = self.comm.Irecv([buf, MPI.BYTE], src, P.TAG_PUSH_DATA)
            self.incoming.append((req, src, clock, int(hdr[3]), buf))
            self.stats["bytes_in"] += nbytes
        else:
            self._fail(f"unknown request kind {kind} from rank {src}", culprit=src)

    def _finish_incoming(self) -> bool:
        progressed = False
        keep = []
        failure = None   # a payload from a dead worker: raised once the list is consistent
        for item in self.incoming:
            req, src, clock, compressed, buf = item
            try:
                ready = req.Test()
            except MPI.Exception as exc:
                ready, failure = False, exc
            if ready:
                progressed = True
                grad = self._decode(buf, compressed)
                self._on_push(src, clock, grad)
            else:
                keep.append(item)
        self.incoming = keep
        if failure is not None:
            raise failure
        return progressed

    def _wire_bytes(self, count: int, compressed: int) -> int:
        if not compressed:
            return count * self.plan.dtype.itemsize
        from .compress import wire_bytes

        return wire_bytes(count)

    def _decode(self, buf: np.ndarray, compressed: int) -> np.ndarray:
        if not compressed:
            return buf.view(self.plan.dtype)
        from .compress import decode_fp16

        return decode_fp16(buf, self.size, self.plan.dtype)

    # -- the loop ------------------------------------------------------------------
    def serve(self, on_save: Callable[[int, dict[str, Any]], None] | None = None,
              signal: Any = None) -> dict[str, Any]:
        """Serve until every worker has said it is done; returns counters.

        ``on_save(step, shard_state)``: called when the workers ask for a checkpoint
        (collective with them). ``signal``: an object whose ``received`` turns true when
        this rank is signalled (server 0 then schedules a checkpoint). Runs once: when it
        returns, the communicators are freed."""
        if self.roles.freed:
            raise P.PSError("this server has served already (or was closed): serve() runs "
                            "once, until every worker has closed", rank=self.roles.rank,
                            size=self.roles.size, op="ps.serve")
        workers = self.roles.workers
        self.on_save = on_save
        self.incoming: list = []
        self.outgoing: list = []
        self.last_heard = {w: time.monotonic() for w in workers}
        self._snap_version = -1
        self._snap = self.params
        start = time.perf_counter()
        # Declared to the watchdog: waiting for the workers not done; only silence counts.
        with waiting("ps.serve", self.comm, workers) as wait:
            self._loop(workers, signal, wait)
        self.stats["seconds"] = time.perf_counter() - start
        self.stats["applied_clocks"] = self.applied
        self.store.commit(self.meta)
        self.roles.free()  # every worker is done: nothing more can arrive
        return self.stats

    def close(self) -> None:
        """Close the store and free the communicators ``setup`` made (idempotent)."""
        self.store.close()
        self.roles.free()

    def _waited_for(self, workers: list[int]) -> list[int]:
        """The workers not done and not held waiting for a reply (all not done if none)."""
        busy = [w for w in workers if not self.done[w]]
        return [w for w in busy if w not in self.waiting] or busy

    def _loop(self, workers: list[int], signal: Any, wait: Any) -> None:
        status = MPI.Status()
        idle = 0
        last_activity = time.monotonic()
        while True:
            try:
                progressed = self._finish_incoming()
                if signal is not None and signal.received and not self.save_at:
                    self._on_signalled()
                msg = self.comm.Improbe(MPI.ANY_SOURCE, MPI.ANY_TAG, status)
                if msg is not None:
                    self._receive(msg, status)
                    progressed = True
            except MPI.Exception as exc:   # a peer died (FT mode only: lost.py)
                self._on_peer_failure(exc)
                progressed = True
            if self.outgoing:
                self.outgoing = [(r, b) for r, b in self.outgoing if not quiet_test(r)]
            if all(self.done.values()) and not self.incoming and not self.outgoing:
                break
            if progressed:
                idle, last_activity = 0, time.monotonic()
                wait.progress()
                wait.set_peers(self._waited_for(workers))
                continue
            if time.monotonic() - last_activity > self.timeout:
                self._fail(f"server {self.index} heard nothing for {self.timeout} s; workers "
                           f"it waits for: ranks {self._waited_for(workers)} (crashed, or stuck "
                           "outside push_pull and long_phase?)")
            idle += 1
            time.sleep(0 if idle < 20 else min(1e-3, 2e-5 * (idle - 19)))
