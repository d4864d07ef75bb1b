"""The watchdog's monitor thread: notice a stalled operation, ask the others, abort.

One daemon thread per rank wakes every ``interval`` seconds and does two things.

* **Notice.** It samples every thread's innermost frame
  (``sys._current_frames()``). A thread whose innermost frame is a
  :class:`~hpcdl.watchdog.comm.WatchedComm` method (or hpcdl's request waits) is
  inside MPI; the *same* frame object seen for ``timeout`` seconds is one
  operation that has waited that long (a frame object held by the monitor is
  never reused for a later call, so identity means "the same call").
* **Answer.** It keeps a receive posted on the watchdog's own ``Dup`` of
  ``COMM_WORLD`` and answers "what are you doing?" with this rank's state: per
  communicator the sequence number and last operation, which threads are inside
  MPI and for how long, and where the main thread is.

Why a query and not a heartbeat: nothing is sent while all is well (a
heartbeat costs messages, and under oversubscription a late heartbeat reads as
a stall), and the answer comes from the stalled rank's *monitor* thread, which
runs while its main thread sleeps, loops in Python (the GIL is handed over every
5 ms) or waits in I/O, i.e. while that rank makes no MPI call at all. A rank
that cannot answer within ``ANSWER_S`` (dead, or stuck in C code holding the
GIL) is reported as "no answer".

On a stall the monitor asks the ranks of the stalled communicator, writes one
report naming the operation, its sequence number, the ranks that have not
arrived and what each was last doing, and calls ``MPI_Abort`` on
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

from .comm import WATCHED_CODES, watched_comms, world_ranks

__all__ = ["Monitor", "ANSWER_S"]

ANSWER_S = 5.0        # how long a stalled rank waits for the others' answers
_TAG_ASK, _TAG_ANSWER = 1, 2


def _where(frame: FrameType | None) -> str:
    if frame is None:
        return "?"
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"


def _comm_of(frame: FrameType) -> Any:
    """The watched mpi4py communicator a watched frame is operating on."""
    owner = frame.f_locals.get("self")
    if isinstance(owner, MPI.Comm):
        return owner
    owner = getattr(owner, "comm", owner)   # _MPIRequest.wait -> its MPICommunicator
    return getattr(owner, "mpi", None)


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
        self._ask_buf = bytearray(8)
        self._ask = channel.Irecv(self._ask_buf, MPI.ANY_SOURCE, _TAG_ASK)

    # -- the loop --------------------------------------------------------------
    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self._serve()
            stalled = self._sample()
            if stalled is not None:
                self._report_and_abort(*stalled)
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

    def _sample(self) -> tuple[int, FrameType, float] | None:
        now = time.monotonic()
        frames = sys._current_frames()
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
                return tid, frame, now - since
        return None

    # -- answering -------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What this rank is doing, as sent to a rank that asks."""
        now = time.monotonic()
        comms = [{"ranks": list(world_ranks(c)), "seq": c.wd_seq, "p2p": c.wd_p2p,
                  "op": c.wd_op} for c in watched_comms()]
        inside = []
        names = {t.ident: t.name for t in threading.enumerate()}
        for tid, (frame, since) in self._seen.items():
            c = _comm_of(frame)
            if c is None:
                continue
            inside.append({"thread": names.get(tid, str(tid)), "op": c.wd_op,
                           "seq": c.wd_seq, "ranks": list(world_ranks(c)),
                           "for_s": round(now - since, 1)})
        main = sys._current_frames().get(threading.main_thread().ident)
        if main is not None and main.f_code in WATCHED_CODES:
            main = main.f_back   # the caller of the MPI call says more than the wrapper
        return {"rank": self.rank, "pid": os.getpid(), "comms": comms, "inside": inside,
                "main_at": _where(main)}

    def _serve(self) -> None:
        """Answer every question that has arrived (non-blocking)."""
        while True:
            status = MPI.Status()
            if not self._ask.Test(status):
                return
            asker = status.Get_source()
            self._ask = self.channel.Irecv(self._ask_buf, MPI.ANY_SOURCE, _TAG_ASK)
            data = json.dumps(self.state()).encode()
            # A buffered send of a few hundred bytes: the asker has its receive posted.
            self.channel.Isend(data, asker, _TAG_ANSWER).Wait()

    def _serve_for(self, seconds: float) -> None:
        """Answer questions for ``seconds`` (instead of sleeping deaf to them)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._serve()
            time.sleep(0.02)

    def _ask_all(self, ranks: list[int]) -> dict[int, dict[str, Any]]:
        """Each rank's :meth:`state`, or nothing for those that do not answer in time."""
        for r in ranks:
            self.channel.Isend(b"?", r, _TAG_ASK).Wait()
        answers: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + ANSWER_S
        while len(answers) < len(ranks) and time.monotonic() < deadline:
            status = MPI.Status()
            if self.channel.Iprobe(MPI.ANY_SOURCE, _TAG_ANSWER, status):
                n = status.Get_count(MPI.BYTE)
                buf = bytearray(n)
                self.channel.Recv(buf, status.Get_source(), _TAG_ANSWER)
                answers[status.Get_source()] = json.loads(bytes(buf))
            else:
                self._serve()       # another stalled rank may be asking us meanwhile
                time.sleep(0.02)
        return answers

    # -- the report ------------------------------------------------------------
    def _report_and_abort(self, tid: int, frame: FrameType, waited: float) -> None:
        comm = _comm_of(frame)
        ranks = list(world_ranks(comm)) if comm is not None else list(range(self.size))
        op = comm.wd_op if comm is not None else frame.f_code.co_name
        seq = comm.wd_seq if comm is not None else -1
        p2p = op in ("Send", "Ssend", "Recv", "send", "recv", "Sendrecv", "Isend", "Irecv") \
            or frame.f_code.co_name in ("wait", "waitall")
        if frame.f_code.co_name in ("wait", "waitall"):
            op = f"{frame.f_code.co_name} after {op}"
        others = [r for r in ranks if r != self.rank]
        answers = self._ask_all(others)
        if self._lower_waiter(answers, ranks, seq, p2p):
            # A lower rank waits in the same operation and writes the same report: one
            # report per stall is easier to read. If it is gone before it aborts, ours follows.
            # Meanwhile keep answering: that lower rank may be asking us right now.
            self._serve_for(ANSWER_S + 2 * self.interval)
        missing = self._not_arrived(ranks, others, answers, seq, p2p, comm)
        what = (f"{op} (point-to-point call #{comm.wd_p2p if comm is not None else '?'}"
                if p2p else f"{op} #{seq}")
        lines = [f"[hpcdl rank {self.rank}/{self.size}] watchdog: {what}"
                 + (")" if p2p else "")
                 + f" on the communicator of world ranks {_span(ranks)} has waited "
                 f"{waited:.1f} s (timeout {self.timeout:g} s, HPCDL_TIMEOUT); "
                 f"ranks that have not arrived: {', '.join(map(str, missing)) or 'none found'}"]
        for r in others:
            lines.append(f"  rank {r}: {_describe(answers.get(r), ranks, seq)}")
        lines.append(f"  rank {self.rank} (this one): waiting in {what}"
                     + (")" if p2p else "") + f" at {_where(frame.f_back)}")
        lines.append("aborting the whole job (MPI_Abort)")
        sys.stderr.write("\n" + "\n".join(lines) + "\n")
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(124)

    def _lower_waiter(self, answers: dict[int, Any], ranks: list[int], seq: int,
                      p2p: bool) -> bool:
        return not p2p and any(
            r < self.rank and any(i["ranks"] == ranks and i["seq"] == seq
                                  and i["for_s"] >= self.timeout - 2 * self.interval
                                  for i in a["inside"])
            for r, a in answers.items())

    def _not_arrived(self, ranks: list[int], others: list[int], answers: dict[int, Any],
                     seq: int, p2p: bool, comm: Any) -> list[int]:
        if p2p and comm is not None:
            peers = [p for p in comm.wd_peer if isinstance(p, int) and p >= 0]
            candidates = [ranks[p] for p in peers if p < len(ranks)] or others
        else:
            candidates = others
        missing = []
        for r in candidates:
            a = answers.get(r)
            if a is None:
                missing.append(r)
                continue
            mine = next((c for c in a["comms"] if c["ranks"] == ranks), None)
            busy = any(i["ranks"] == ranks for i in a["inside"])
            if mine is None or (p2p and not busy) or (not p2p and mine["seq"] < seq):
                missing.append(r)
        return missing


def _span(ranks: list[int]) -> str:
    if ranks and ranks == list(range(ranks[0], ranks[-1] + 1)) and len(ranks) > 2:
        return f"{ranks[0]}..{ranks[-1]}"
    return ",".join(map(str, ranks))


def _describe(answer: dict[str, Any] | None, ranks: list[int], seq: int) -> str:
    if answer is None:
        return (f"no answer within {ANSWER_S:g} s (its process is gone, or stuck in C code "
                "that holds the GIL)")
    mine = next((c for c in answer["comms"] if c["ranks"] == ranks), None)
    parts = []
    if mine is None:
        parts.append("has not used this communicator")
    else:
        parts.append(f"last started {mine['op']} #{mine['seq']} on it")
    for i in answer["inside"]:
        parts.append(f"thread {i['thread']} inside {i['op']} #{i['seq']} on world ranks "
                     f"{_span(i['ranks'])} for {i['for_s']} s")
    if not answer["inside"]:
        parts.append("inside no MPI call")
    parts.append(f"main thread at {answer['main_at']}")
    return "; ".join(parts)
