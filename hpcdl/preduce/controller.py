"""The P-Reduce controller: forms groups from the ranks that report ready.

Where it runs: a daemon thread on rank 0, on its own ``Dup`` of the session's
communicator, so its messages never meet a collective of the training (which
runs on other communicators) and rank 0 still trains like every other rank.
A dedicated controller rank would idle a whole process (a core and, on a GPU
node, a GPU) to do a few microseconds of bookkeeping per step; a thread costs
nothing while it sleeps between polls. It needs ``MPI_THREAD_MULTIPLE``
(``hpcdl.init`` asks for it; the session checks ``MPI.Query_thread()``).

It polls (``Iprobe`` then a short sleep) instead of blocking in ``MPI_Recv``:
Open MPI's blocking receive spins a core at 100%, which on a node whose cores
all train would slow rank 0 down, the very straggler effect P-Reduce removes.

How a group forms: the first ready rank opens a group with a deadline; it
closes when ``P`` ranks have joined or the deadline passes (then with fewer,
possibly one: that rank goes on alone). The deadline adapts: doubled after a
group closed short, times 0.9 after a full one, within ``[lo, hi]``.
A *barrier* (every rank, one full average) replaces the next groups when the
connectivity window went ``max_groups`` groups without connecting
(``"connect"``), every ``sync_every`` ready messages (``"every"``), and at the
end: when ``total_steps`` ready messages came (``"budget"``: every rank
stops at its next call) or every rank called ``close`` (``"close"``); the end
barriers reply ``STOP``. A closed rank forms no more groups; it joins the
full syncs until the stop, so it stays connected.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import CommError
from ..watchdog import waiting
from .connectivity import Connectivity
from .messages import (ERROR, FULL_SYNC_ERROR, GROUP, STOP, SYNC, TAG_ALIVE, TAG_HEARTBEAT,
                       TAG_READY, TAG_REPLY, Ready, Reply)

__all__ = ["Deadline", "Controller"]

_END = ("budget",)  # "close" ends when len(final) == n
_RANK = {"connect": 0, "every": 1, "budget": 2}


@dataclass
class Deadline:
    """How long the first ready rank waits for partners (seconds), adapted per group."""

    lo: float = 0.0005
    value: float = 0.005
    hi: float = 0.5

    def update(self, short: bool) -> None:
        self.value = min(self.hi, 2 * self.value) if short else max(self.lo, 0.9 * self.value)


@dataclass
class Controller:
    comm: Any                    # mpi4py intracommunicator (the session's control Dup)
    group_size: int
    deadline: Deadline
    max_groups: int
    total_steps: int = 0         # 0: no budget, the run ends when a rank calls close
    sync_every: int = 0          # 0: no periodic full sync
    timeout: float = 600.0
    poll: float = 0.0003
    log: list[Reply] = field(default_factory=list)   # every reply-set sent, for tests and stats
    error: BaseException | None = None
    start_step: int = 0          # a resumed run: the steps its checkpoint had counted

    def __post_init__(self) -> None:
        self.n = self.comm.Get_size()
        self.conn = Connectivity(self.n, self.max_groups)
        self.steps = self.start_step
        # The state at the last full sync, the one consistent point of a run (every rank
        # is in it, no group is open): what a checkpoint saves. Written by this thread
        # before the sync's replies go out, and not again until every rank, rank 0
        # included, has reported ready once more, so rank 0 reads it safely after its
        # own reply.
        self.synced: dict[str, float] | None = None
        self.open: list[int] = []
        self.open_at = 0.0
        self.barrier: str | None = None
        self.held: list[int] = []
        self.sigs: dict[int, str] = {}
        self.final: set[int] = set()
        # The next periodic sync: the first multiple of sync_every above the steps done
        # (steps grow by one per message, so this is where an uninterrupted run stands).
        self.next_every = self.sync_every * (self.steps // self.sync_every + 1) \
            if self.sync_every else 0
        self.done = False
        self._reqs: list[Any] = []
        self._thread = threading.Thread(target=self._main, name="hpcdl-preduce-controller",
                                        daemon=True)

    # life cycle ------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> bool:
        """True when the thread ended within ``timeout`` seconds."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _main(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            self.error = exc
            raise  # threading.excepthook (hpcdl.init's) aborts the job naming rank 0
        finally:
            from mpi4py import MPI

            MPI.Request.Waitall(self._reqs)

    def _loop(self) -> None:
        # Declared to the watchdog: waiting for the ranks still computing (not held, not
        # in the open group); only silence counts.
        with waiting("preduce controller", self.comm) as wait:
            self._poll(wait)

    def _waited_for(self) -> list[int]:
        busy = set(self.held) | set(self.open)
        return [r for r in range(self.n) if r not in busy]

    def _poll(self, wait: Any) -> None:
        from mpi4py import MPI

        status = MPI.Status()
        last = time.monotonic()
        wait.set_peers(self._waited_for())
        while not self.done:
            got = False
            while not self.done and self.comm.Iprobe(MPI.ANY_SOURCE, TAG_READY, status):
                msg = self.comm.recv(source=status.Get_source(), tag=TAG_READY)
                self._on_ready(Ready(*msg))
                got = True
            while not self.done and self.comm.Iprobe(MPI.ANY_SOURCE, TAG_HEARTBEAT, status):
                self.comm.Recv(bytearray(0), source=status.Get_source(), tag=TAG_HEARTBEAT)
                # A rank in a long phase is alive: not silence. The held ranks wait on it
                # (a full sync): their own timers start again too.
                for r in set(self.held) | set(self.open):
                    self._reqs.append(self.comm.Isend(bytearray(0), dest=r, tag=TAG_ALIVE))
                got = True
            now = time.monotonic()
            if got:
                last = now
                wait.progress()
                wait.set_peers(self._waited_for())
            if self.open and now - self.open_at >= self.deadline.value:
                self._close_group("deadline")
            elif not got and not self.done:
                if now - last > self.timeout:
                    raise CommError(f"no rank reported ready for {self.timeout:g} s; ranks "
                                    f"still computing: {self._waited_for()} (stuck outside "
                                    "the session's calls and long_phase?)", rank=0,
                                    op="preduce controller")
                time.sleep(self.poll)
            if len(self._reqs) > 64:
                self._reqs = [q for q in self._reqs if not q.Test()]

    # decisions -------------------------------------------------------------------
    def _on_ready(self, msg: Ready) -> None:
        r = msg.rank
        self.sigs[r] = msg.signature
        if msg.final:
            self.final.add(r)  # held from now on: joins only full syncs, then the stop
        else:
            self.steps += 1
        reason = None
        if self.total_steps and self.steps >= self.total_steps:
            reason = "budget"
        elif self.sync_every and self.steps >= self.next_every:
            reason = "every"
            self.next_every += self.sync_every
        if reason is not None and _RANK[reason] > _RANK.get(self.barrier, -1):
            self.barrier = reason  # the end outranks an epoch sync, which outranks "connect"
        if self.barrier is not None:
            self.held += self.open  # they were waiting for partners: now they wait for all
            self.open = []
        if self.barrier is not None or msg.final:
            self.held.append(r)
            if len(self.held) == self.n:
                self._release()
            elif self.open and len(self.open) + len(self.final) == self.n:
                self._close_group("all")  # nobody else can come
            return
        self.open.append(r)
        if len(self.open) == 1:
            self.open_at = time.monotonic()
        if len(self.open) == self.group_size:
            self._close_group("full")
        elif len(self.open) + len(self.final) == self.n:
            self._close_group("all")

    def _mismatch(self, members: list[int]) -> str | None:
        sigs = {self.sigs[m] for m in members}
        if len(sigs) == 1:
            return None
        return "buffers differ across the group: " + ", ".join(
            f"{self.sigs[m]} at rank {m}" for m in sorted(members))

    def _close_group(self, reason: str) -> None:
        members = tuple(sorted(self.open))
        self.open = []
        bad = self._mismatch(list(members))
        if bad is not None:
            self._send(Reply(ERROR, members, bad, self.steps))
            return
        self.deadline.update(short=len(members) < self.group_size)
        self._send(Reply(GROUP, members, reason, self.steps))
        if self.conn.add_group(members) == "force" and self.barrier is None:
            self.barrier = "connect"

    def _release(self) -> None:
        members = tuple(range(self.n))
        end = self.barrier in _END or len(self.final) == self.n
        kind = STOP if end else SYNC
        bad = self._mismatch(self.held)
        reply = Reply(ERROR, members, FULL_SYNC_ERROR + bad, self.steps) if bad else \
            Reply(kind, members, self.barrier or "close", self.steps)
        end = end or bad is not None  # a mismatch ends the session: every worker raised
        self.held = sorted(self.final)  # closed ranks stay held until the stop
        self.barrier = None
        self.conn.reset()
        self.synced = {"steps": self.steps, "deadline": self.deadline.value,
                       "replies": len(self.log) + 1}
        self._send(reply)
        if end:
            self.done = True

    def _send(self, reply: Reply) -> None:
        self.log.append(reply)
        for m in reply.members:
            self._reqs.append(self.comm.isend(tuple(reply), dest=m, tag=TAG_REPLY))
