"""The worker's client: push gradients, pull parameters, say done.

``push_pull(grads)`` sends each server its shard of the gradient (header and
payload with ``Isend``), posts the receives of the answers, and waits for all
servers by polling with a timeout, watching for an error any server sends
instead. It returns the parameters for the next clock. A gradient whose names
or shapes do not match the served parameters is refused here: the worker tells
every server why (so the whole job ends, no rank waits forever) and raises.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
from mpi4py import MPI

from ..watchdog import waiting
from . import protocol as P
from .roles import Roles
from .sharding import ShardPlan
from ..ulfm import ack_failed, is_process_failure

__all__ = ["Worker"]


def as_numpy(x: Any) -> np.ndarray:
    """A NumPy view of a NumPy array or a torch tensor (copied to the host if on a GPU)."""
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.split(".")[0] == "torch":
        return x.detach().cpu().numpy()
    return np.asarray(x)


class Worker:
    is_server = False

    def __init__(self, roles: Roles, plan: ShardPlan, timeout: float,
                 compression: str | None = None, on_failure: str = "abort") -> None:
        self.roles, self.plan, self.timeout = roles, plan, timeout
        self.on_failure = on_failure     # "shrink": another worker's death is not an error
        self.lost_peers: list[int] = []  # dead workers this one has heard of (FT mode)
        self.compression = compression
        self.comm: MPI.Comm = roles.mpi
        self.rank = roles.rank
        self.clock = 0
        self.max_clock_gap = 0      # the largest gap any server reported on a reply
        self.gaps: list[int] = []   # per push: the largest gap over the servers
        self.version = 0
        self.signalled = False      # set by a checkpoint driver: flag the next push
        self.save_at = 0            # server 0's answer: the step to checkpoint at (0: none)
        self.flat = {n: np.zeros(math.prod(s), plan.dtype)
                     for n, s in zip(plan.names, plan.shapes)}
        self.params = {n: self.flat[n].reshape(s) for n, s in zip(plan.names, plan.shapes)}
        self._send = [np.empty(plan.shard_size(i), plan.dtype) for i in range(plan.num_servers)]
        self._recv = [np.empty(plan.shard_size(i), plan.dtype) for i in range(plan.num_servers)]
        self._hdrs = [np.empty(P.HEADER_LEN, np.int64) for _ in range(plan.num_servers)]
        self.closed = False

    # -- errors -------------------------------------------------------------------
    def fail(self, message: str) -> None:
        """End the job: every server learns why (and tells the other workers); raise here."""
        text = P.encode_text(message)
        for s in self.roles.servers:
            self.comm.Send([P.header(0, rank=self.rank), MPI.INT64_T], s, P.TAG_ERROR)
            self.comm.Send([text, MPI.BYTE], s, P.TAG_ERROR_TEXT)
        self.closed = True
        raise P.PSError(message, rank=self.rank, size=self.roles.size, op="ps.push")

    def _peer_failure(self, exc: BaseException, op: str) -> None:
        """An MPI error on the PS communicator (FT mode): a dead server ends the job naming
        it; a dead worker does too unless ``on_failure="shrink"`` (then it is noted and
        the servers go on without it, hpcdl/ps/lost.py). Anything else is re-raised."""
        if not is_process_failure(exc):
            raise exc
        dead = ack_failed(self.comm)
        servers = [r for r in dead if r in self.roles.servers]
        new = [r for r in dead if r not in servers and r not in self.lost_peers]
        self.lost_peers.extend(new)
        if servers or (new and self.on_failure != "shrink"):
            self.closed = True
            why = (f"server rank(s) {servers} died; each server holds the only copy of its "
                   "shard of the parameters (shards are not replicated), so the job cannot "
                   "go on" if servers else f"worker rank(s) {new} died (process failure)")
            raise P.PSError(why, rank=self.rank, size=self.roles.size, op=op) from exc

    def _check_error(self) -> bool:
        """Raise what a server reported; True when a server said a worker this one waits
        for is alive in a long phase (the wait's timeout counts again)."""
        st = MPI.Status()
        alive = False
        try:
            while self.comm.Iprobe(MPI.ANY_SOURCE, P.TAG_ALIVE, st):
                self.comm.Recv([np.empty(P.HEADER_LEN, np.int64), MPI.INT64_T],
                               st.Get_source(), P.TAG_ALIVE)
                alive = True
            error = self.comm.Iprobe(MPI.ANY_SOURCE, P.TAG_ERROR, st)
        except MPI.Exception as exc:    # FT mode: a peer died (receives from any source)
            self._peer_failure(exc, "ps.push_pull")
            return True                 # a worker's death is news: the servers go on
        if error:
            src = st.Get_source()
            self.comm.Recv([np.empty(P.HEADER_LEN, np.int64), MPI.INT64_T], src, P.TAG_ERROR)
            self.comm.Probe(src, P.TAG_ERROR_TEXT, st)
            text = np.empty(st.Get_count(MPI.BYTE), np.uint8)
            self.comm.Recv([text, MPI.BYTE], src, P.TAG_ERROR_TEXT)
            self.closed = True
            raise P.PSError(f"server rank {src} ended the job: {P.decode_text(text)}",
                            rank=self.rank, size=self.roles.size, op="ps.push_pull")
        return alive

    def _check(self, grads: Mapping[str, Any]) -> dict[str, np.ndarray]:
        missing = [n for n in self.plan.names if n not in grads]
        extra = [n for n in grads if n not in self.flat]
        if missing or extra:
            self.fail(f"worker rank {self.rank}: the gradients do not name the served "
                      f"parameters (missing {missing}, unknown {extra})")
        out = {}
        for name, shape in zip(self.plan.names, self.plan.shapes):
            g = as_numpy(grads[name])
            if tuple(g.shape) != shape:
                self.fail(f"worker rank {self.rank}: gradient of parameter {name!r} has shape "
                          f"{tuple(g.shape)}, the server holds shape {shape}")
            out[name] = np.ravel(g)
        return out

    # -- the exchange ---------------------------------------------------------------
    def _check_open(self, op: str) -> None:
        """Refuse a closed worker; raise what a server reported, if anything."""
        if self.closed:
            raise P.PSError("this worker is closed", rank=self.rank, size=self.roles.size,
                            op=op)
        self._check_error()

    def _wait_all(self, reqs: list, op: str = "ps.push_pull") -> bool:
        """Wait for every request in ``reqs`` (False: ``timeout`` ran out), watching for
        a server's error report; on one, cancel them before raising it."""
        def test() -> bool:
            try:
                return MPI.Request.Testall(reqs)
            except MPI.Exception as exc:   # FT mode: a request to or from a dead server
                self._peer_failure(exc, op)
                return False

        try:
            with waiting(op, self.comm, self.roles.servers):   # seen by the watchdog
                return P.poll(test, self.timeout, self._check_error)
        except P.PSError:
            for r in reqs:
                if r != MPI.REQUEST_NULL:
                    r.Cancel()
            raise

    def _exchange(self, kind: int, grads: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        self._check_open("ps.push_pull")
        reqs, keep = [], []
        for i, server in enumerate(self.roles.servers):
            reqs.append(self.comm.Irecv([self._hdrs[i], MPI.INT64_T], server, P.TAG_REPLY))
            reqs.append(self.comm.Irecv([self._recv[i].view(np.uint8), MPI.BYTE], server,
                                        P.TAG_REPLY_DATA))
        for i, server in enumerate(self.roles.servers):
            compressed = 0
            if grads is not None:
                payload = self.plan.pack(i, grads, self._send[i])
                if self.compression == "fp16":
                    from .compress import encode_fp16

                    payload, compressed = encode_fp16(payload), 1
                count = self._send[i].size
            else:
                count = 0
            hdr = P.header(kind, self.clock, count, compressed, self.rank,
                           int(self.signalled and grads is not None and i == 0))
            keep.append(hdr)
            reqs.append(self.comm.Isend([hdr, MPI.INT64_T], server, P.TAG_REQUEST))
            if grads is not None:
                keep.append(payload)
                reqs.append(self.comm.Isend([payload.view(np.uint8), MPI.BYTE], server,
                                            P.TAG_PUSH_DATA))
        ok = self._wait_all(reqs)
        if not ok:
            late = [s for i, s in enumerate(self.roles.servers) if not reqs[2 * i + 1].Test()]
            raise P.PSTimeoutError(f"no answer from server ranks {late} within {self.timeout} s",
                                   rank=self.rank, size=self.roles.size, op="ps.push_pull")
        gap = 0
        for i in range(len(self.roles.servers)):
            self.plan.unpack(i, self._recv[i], self.flat)
            gap = max(gap, int(self._hdrs[i][5]))
        self.version = int(self._hdrs[0][1])
        self.save_at = int(self._hdrs[0][6]) or self.save_at
        if kind == P.PUSH:
            self.clock += 1
            self.gaps.append(gap)
            self.max_clock_gap = max(self.max_clock_gap, gap)
        return self.params

    def push_pull(self, grads: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Push this clock's gradients; return the parameters to compute the next clock on
        (a dict of arrays this client reuses; copy them out before the next call)."""
        return self._exchange(P.PUSH, self._check(grads))

    def pull(self) -> dict[str, np.ndarray]:
        """The servers' current parameters, without pushing."""
        return self._exchange(P.PULL, None)

    def request_checkpoint(self, step: int, stop: bool = False) -> None:
        """Ask every server to quiesce for checkpoint ``step`` and wait until each says it
        is saving (then write this worker's part with the same collective save). Call it
        on every worker at the same step, after the last push_pull before it."""
        self._check_open("ps.checkpoint")
        hdrs = [np.empty(P.HEADER_LEN, np.int64) for _ in self.roles.servers]
        reqs = [self.comm.Irecv([h, MPI.INT64_T], s, P.TAG_SAVED)
                for h, s in zip(hdrs, self.roles.servers)]
        for s in self.roles.servers:
            self.comm.Send([P.header(P.SAVE, self.clock, step, 0, self.rank, int(stop)),
                            MPI.INT64_T], s, P.TAG_REQUEST)
        ok = self._wait_all(reqs, "ps.checkpoint")
        if not ok:
            late = [s for s, r in zip(self.roles.servers, reqs) if not r.Test()]
            raise P.PSTimeoutError(f"server ranks {late} did not start checkpoint {step} within "
                                   f"{self.timeout} s (a worker missing it, or a server stuck)",
                                   rank=self.rank, size=self.roles.size, op="ps.checkpoint")
        wrong = [(s, int(h[2])) for s, h in zip(self.roles.servers, hdrs) if int(h[2]) != step]
        if wrong:
            self.fail(f"worker rank {self.rank} asked for checkpoint {step}; servers (rank, "
                      f"step) answered {wrong}")
        if self.save_at and self.clock >= self.save_at:
            self.save_at = 0

    def long_phase(self, what: str = "a long phase") -> Any:
        """Context manager around a long stretch without pushes (evaluation, a checkpoint):
        the servers hear a heartbeat every quarter ``timeout``, so they (and the workers
        waiting on this one) do not take it for a stuck rank (hpcdl/heartbeat.py)."""
        from ..heartbeat import LongPhase

        self._check_open("ps.long_phase")

        def beat() -> list:
            hdr = P.header(P.HEARTBEAT, self.clock, 0, 0, self.rank)
            return [self.comm.Isend([hdr, MPI.INT64_T], s, P.TAG_REQUEST)
                    for s in self.roles.servers]

        return LongPhase(beat, self.timeout / 4, what)

    def close(self) -> None:
        """Tell every server this worker is done (no more pushes), then free the
        communicators ``setup`` made, ``worker_comm`` included (idempotent)."""
        if not self.closed:  # closed already by an error: nothing more to tell the servers
            self.closed = True
            for s in self.roles.servers:
                self.comm.Send([P.header(P.DONE, self.clock, 0, 0, self.rank), MPI.INT64_T],
                               s, P.TAG_REQUEST)
        self.roles.free()
