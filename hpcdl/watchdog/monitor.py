"""The watchdog's monitor thread: notice a stalled wait, ask the others, abort.

One daemon thread per rank wakes every ``interval`` seconds and does two things.

* **Notice.** A thread is waiting when its innermost frame is a
  :class:`~hpcdl.watchdog.comm.WatchedComm` method (inside MPI; the *same*
  frame object seen for ``timeout`` seconds is one call that has waited that
  long: a frame the monitor holds is never reused for a later call) or when it
  declared a wait (:func:`hpcdl.watchdog.waiting`: the parameter server's and
  P-Reduce's polling loops, request waits, the torch backend's ``Work.wait``),
  which carries its own start time.
* **Answer.** It keeps a receive posted on the watchdog's own ``Dup`` of
  ``COMM_WORLD`` and answers "what are you doing?" with this rank's state: the
  asked communicator's sequence number and last operation, which threads wait
  and for whom, and where the main thread is.

Why a query and not a heartbeat: nothing is sent while all is well, and the
answer comes from the stalled rank's *monitor* thread, which runs while its
main thread sleeps, loops in Python or waits in I/O, i.e. while that rank
makes no MPI call at all. A rank that cannot answer within ``ANSWER_S`` (dead,
or stuck in C code holding the GIL) is reported as "no answer".

Every send is nonblocking and kept in a list that each round tests: two
monitors that ask each other at once (every rank of a stalled collective
notices it together) must not both block in a send the other never receives,
which a blocking send past the eager size does. An answer is bounded
(report.MAX_PEERS ranks per waiting thread, one communicator's entry), so it
does not grow with the job.

On a stall the monitor writes one report naming the operation, the ranks that
hold it up and what each was doing (report.py), and calls ``MPI_Abort`` on
``COMM_WORLD``. It needs ``MPI_THREAD_MULTIPLE`` (mpi4py's default).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from types import FrameType
from typing import Any

from mpi4py import MPI

from . import report as R
from .comm import WATCHED_CODES, watched_comms, world_ranks
from .waits import Wait, current_waits
from ..ulfm import is_process_failure, quiet_test

__all__ = ["Monitor", "ANSWER_S"]

ANSWER_S = 5.0        # how long a stalled rank waits for the others' answers
_TAG_ASK, _TAG_ANSWER = 1, 2
_ASK_BYTES = 64       # a question is a communicator key (report.comm_key) or empty


def _where(frame: FrameType | None) -> str:
    if frame is None:
        return "?"
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"


def _world(comm: Any, local: tuple[int, ...] | None) -> list[int]:
    """World ranks of ``local`` ranks of ``comm`` (all of them for None)."""
    ranks = world_ranks(comm if comm is not None else MPI.COMM_WORLD)
    if local is None:
        return list(ranks)
    out = []
    for p in local:
        try:
            p = int(p)
        except (TypeError, ValueError):
            continue   # MPI.ANY_SOURCE and the like name nobody
        if 0 <= p < len(ranks):
            out.append(ranks[p])
    return out


class Monitor(threading.Thread):
    """The per-rank watchdog thread (started by :func:`hpcdl.watchdog.start`)."""

    def __init__(self, timeout: float, channel: MPI.Intracomm) -> None:
        super().__init__(name="hpcdl-watchdog", daemon=True)
        self.timeout = float(timeout)
        self.interval = min(1.0, max(0.05, self.timeout / 10))
        self.channel = channel            # a plain Dup of COMM_WORLD, used only here
        self.rank = channel.Get_rank()
        self.size = channel.Get_size()
        self._halt = threading.Event()
        self._seen: dict[int, tuple[FrameType, float]] = {}   # thread id -> (frame, since)
        self._pending: list[tuple[MPI.Request, bytes]] = []   # sends not known complete
        self._ask_buf = bytearray(_ASK_BYTES)
        self._ask = channel.Irecv(self._ask_buf, MPI.ANY_SOURCE, _TAG_ASK)

    # -- the loop --------------------------------------------------------------
    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self._serve()
            stalled = self._sample()
            if stalled is not None:
                self._report_and_abort(stalled)
                return

    def stop(self) -> None:
        """Stop the thread and withdraw its posted receive (before MPI_Finalize)."""
        self._halt.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=5 * self.interval + 5)
        try:
            self._ask.Cancel()
            self._ask.Wait()
        except MPI.Exception:
            pass
        # Answers to an asker that has gone: give them a moment, then let them be.
        deadline = time.monotonic() + 1.0
        while self._pending and time.monotonic() < deadline:
            self._flush()
            time.sleep(0.01)

    def _sample(self) -> R.Stall | None:
        now = time.monotonic()
        frames = sys._current_frames()
        declared = current_waits()
        me = threading.get_ident()
        seen: dict[int, tuple[FrameType, float]] = {}
        for tid, frame in frames.items():
            if tid == me or frame.f_code not in WATCHED_CODES:
                continue
            old = self._seen.get(tid)
            since = old[1] if old is not None and old[0] is frame else now
            seen[tid] = (frame, since)
        self._seen = seen
        for tid, (frame, since) in seen.items():
            if now - since >= self.timeout:
                return self._frame_stall(frame, now - since)
        for tid, wait in declared.items():
            if tid != me and tid not in seen and now - wait.since >= self.timeout:
                return self._declared_stall(wait, frames.get(tid), now - wait.since)
        return None

    def _frame_stall(self, frame: FrameType, waited: float) -> R.Stall:
        comm = frame.f_locals.get("self")
        ranks = list(world_ranks(comm))
        op = comm.wd_op
        if op in R.P2P_OPS:
            peers = _world(comm, tuple(p for p in comm.wd_peer if isinstance(p, int)
                                       and p >= 0)) or [r for r in ranks if r != self.rank]
            what = f"{op} (point-to-point call #{comm.wd_p2p})"
            return R.Stall(op, what, ranks, peers, -1, False, _where(frame.f_back), waited)
        return R.Stall(op, f"{op} #{comm.wd_seq}", ranks, ranks, comm.wd_seq, True,
                       _where(frame.f_back), waited)

    def _declared_stall(self, wait: Wait, frame: FrameType | None, waited: float) -> R.Stall:
        ranks = _world(wait.comm, None)
        peers = _world(wait.comm, wait.peers)
        return R.Stall(wait.op, wait.op, ranks, peers, -1, False, _where(frame), waited)

    # -- answering -------------------------------------------------------------
    def state(self, key: str = "") -> dict[str, Any]:
        """What this rank is doing, as sent to a rank that asks about communicator ``key``."""
        now = time.monotonic()
        comm = None
        if key:
            for c in watched_comms():
                if R.comm_key(world_ranks(c)) == key:
                    comm = {"seq": c.wd_seq, "p2p": c.wd_p2p, "op": c.wd_op}
                    break
        inside = []
        names = {t.ident: t.name for t in threading.enumerate()}
        for tid, (frame, since) in self._seen.items():
            c = frame.f_locals.get("self")
            if not isinstance(c, MPI.Comm):
                continue
            ranks = list(world_ranks(c))
            peers = ranks if c.wd_op not in R.P2P_OPS else \
                _world(c, tuple(p for p in c.wd_peer if isinstance(p, int) and p >= 0))
            inside.append(self._entry(names.get(tid, str(tid)), f"{c.wd_op} #{c.wd_seq}",
                                      ranks, peers, now - since))
        for tid, wait in current_waits().items():
            if tid not in self._seen and tid != threading.get_ident():
                inside.append(self._entry(names.get(tid, str(tid)), wait.op,
                                          _world(wait.comm, None),
                                          _world(wait.comm, wait.peers), now - wait.since))
        main = sys._current_frames().get(threading.main_thread().ident)
        if main is not None and main.f_code in WATCHED_CODES:
            main = main.f_back   # the caller of the MPI call says more than the wrapper
        return {"rank": self.rank, "pid": os.getpid(), "comm": comm, "asked": bool(key),
                "inside": inside, "main_at": _where(main)}

    @staticmethod
    def _entry(thread: str, op: str, ranks: list[int], peers: list[int],
               for_s: float) -> dict[str, Any]:
        return {"thread": thread, "op": op, "span": R.span(ranks),
                "peers": peers[:R.MAX_PEERS], "for_s": round(for_s, 1)}

    def _isend(self, data: bytes, dest: int, tag: int) -> None:
        # Never Wait on a send here: the receiver may be a monitor sending to us.
        self._pending.append((self.channel.Isend(data, dest, tag), data))

    def _flush(self) -> None:
        self._pending = [(r, b) for r, b in self._pending if not quiet_test(r)]

    def _serve(self) -> None:
        """Answer every question that has arrived; never blocks."""
        self._flush()
        while True:
            status = MPI.Status()
            try:
                if not self._ask.Test(status):
                    return
            except MPI.Exception as exc:   # FT mode (HPCDL_FT=1): a rank died; serve the rest
                if not is_process_failure(exc):
                    raise
                self.channel.Ack_failed()
                return
            asker = status.Get_source()
            key = bytes(self._ask_buf[:status.Get_count(MPI.BYTE)]).decode()
            self._ask = self.channel.Irecv(self._ask_buf, MPI.ANY_SOURCE, _TAG_ASK)
            self._isend(json.dumps(self.state(key)).encode(), asker, _TAG_ANSWER)

    def _serve_for(self, seconds: float) -> None:
        """Answer questions for ``seconds`` (instead of sleeping deaf to them)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._serve()
            time.sleep(0.02)

    def _ask_all(self, ranks: list[int], key: str, deadline: float) -> dict[int, Any]:
        """Each rank's :meth:`state` (None for those that do not answer by ``deadline``)."""
        answers: dict[int, Any] = {}
        if self.rank in ranks:
            answers[self.rank] = self.state(key)
        for r in ranks:
            if r != self.rank:
                self._isend(key.encode(), r, _TAG_ASK)
        while len(answers) < len(ranks) and time.monotonic() < deadline:
            status = MPI.Status()
            msg = self.channel.Improbe(MPI.ANY_SOURCE, _TAG_ANSWER, status)
            if msg is not None:
                buf = bytearray(status.Get_count(MPI.BYTE))
                msg.Recv(buf)
                if status.Get_source() in ranks:
                    answers[status.Get_source()] = json.loads(bytes(buf))
            else:
                self._serve()       # another stalled rank may be asking us meanwhile
                time.sleep(0.02)
        return {r: answers.get(r) for r in ranks}

    def _follow(self, stall: R.Stall) -> dict[int, Any]:
        """Ask along the wait-for graph, from this wait's peers, until no new rank."""
        deadline = time.monotonic() + ANSWER_S
        answers: dict[int, Any] = {}
        ask = [r for r in stall.peers]
        while ask and time.monotonic() < deadline:
            # No communicator asked about: sequence numbers mean nothing to a graph walk.
            answers.update(self._ask_all(ask, "", deadline))
            got = {r: a for r, a in answers.items() if a is not None}
            ask = R.next_to_ask(got, set(answers))
        return answers

    # -- the report ------------------------------------------------------------
    def _report_and_abort(self, stall: R.Stall) -> None:
        others = [r for r in stall.ranks if r != self.rank]
        extra = ""
        if stall.collective:
            answers = self._ask_all(others, stall.key, time.monotonic() + ANSWER_S)
            if self._lower_waiter(answers, stall):
                # A lower rank waits in the same operation and writes the same report: one
                # report per stall is easier to read. If it is gone before it aborts, ours
                # follows. Meanwhile keep answering: it may be asking us right now.
                self._serve_for(ANSWER_S + 2 * self.interval)
            missing = R.not_arrived(stall, answers, self.rank)
            wrong = R.mismatched(stall, answers)
            if wrong:
                extra = (f"; MISMATCHED collective: this rank called {stall.what}, "
                         + ", ".join(wrong))
        else:
            answers = self._follow(stall)
            missing = R.stalled_ranks(answers, self.rank)
        where = (f"on the communicator of world ranks {R.span(stall.ranks)}" if stall.collective
                 else f"waiting for world ranks {R.span(stall.peers)}")
        lines = [f"[hpcdl rank {self.rank}/{self.size}] watchdog: {stall.what} {where} has "
                 f"waited {stall.waited:.1f} s (timeout {self.timeout:g} s, HPCDL_TIMEOUT); "
                 f"ranks that have not arrived: {', '.join(map(str, missing)) or 'none found'}"
                 + extra]
        for r in sorted(answers):
            if r != self.rank:
                lines.append(f"  rank {r}: {R.describe(answers[r], ANSWER_S)}")
        lines.append(f"  rank {self.rank} (this one): waiting in {stall.what} at {stall.where}")
        lines.append("aborting the whole job (MPI_Abort)")
        sys.stderr.write("\n" + "\n".join(lines) + "\n")
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(124)

    def _lower_waiter(self, answers: dict[int, Any], stall: R.Stall) -> bool:
        want = f"{stall.op} #{stall.seq}"
        return any(
            r < self.rank and a is not None and any(
                i["op"] == want and i["span"] == R.span(stall.ranks)
                and i["for_s"] >= self.timeout - 2 * self.interval for i in a["inside"])
            for r, a in answers.items())
