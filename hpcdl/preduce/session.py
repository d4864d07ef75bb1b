"""The worker side of dynamic P-Reduce: ``PReduce(P)(x)`` averages ``x`` with a group.

    session = hpcdl.PReduce(group_size=2)
    for batch in data:
        local_step(params, batch)
        r = session(params)          # in place: the average over r.members
        if r.kind == "stop":         # the controller ended the run (budget or a close)
            break
    session.close(params)            # no-op after a stop; else ends the run for everyone

Each call sends "ready" to the controller (a thread on rank 0, see
controller.py), waits for its reply and averages ``x`` over the members it
names: point-to-point messages among the members for a group (groups.py: no MPI
communicator per group), the whole session communicator for a full sync. Creating a
session is collective (two ``Dup``, freed when the session stops).
"""

from __future__ import annotations

import time
from typing import Any

from ..buffers import as_buffer
from ..collectives.api import allreduce
from ..comm.mpi import MPICommunicator
from ..errors import CommError, InvalidArgumentError, MismatchError
from ..heartbeat import LongPhase
from ..ops import dtype_name
from ..runtime import default_comm
from ..watchdog import waiting
from .connectivity import default_max_groups
from .controller import Controller, Deadline
from .groups import GroupAverager
from .messages import (ERROR, FULL_SYNC_ERROR, GROUP, STOP, TAG_ALIVE, TAG_HEARTBEAT, TAG_READY,
                       TAG_REPLY, Ready, Reply)

__all__ = ["PReduce", "Reply"]

_OP = "preduce"


class PReduce:
    """A dynamic P-Reduce session over ``comm`` (default: hpcdl's communicator).

    ``group_size``: the most ranks that average together (2 <= P <= size).
    ``total_steps``: end the run (a final full sync, reply ``stop``) once the
    ranks have reported this many steps in all (0: until a rank calls close).
    ``sync_every``: a full sync every this many reported steps (0: none), e.g.
    one per epoch. ``max_groups``: groups a connectivity window may take
    before a full sync is forced (default ``4 ceil((n-1)/(P-1))``).
    ``deadline``: ``(lo, initial, hi)`` seconds the first ready rank waits.
    ``timeout``: seconds any wait may take before it raises ``CommError``.
    ``state``: a resumed run's :meth:`sync_state` from its checkpoint (read on rank 0):
    the controller goes on counting from its steps (the periodic syncs and the budget
    fall where they would have) with its adapted deadline.
    """

    def __init__(self, group_size: int, comm: Any = None, *, total_steps: int = 0,
                 sync_every: int = 0, max_groups: int | None = None,
                 deadline: tuple[float, float, float] = (0.0005, 0.005, 0.5),
                 timeout: float = 600.0, state: dict[str, Any] | None = None) -> None:
        from mpi4py import MPI

        c = default_comm(comm)
        self.rank, self.size = c.rank, c.size
        self.group_size = group_size
        bad = lambda msg: InvalidArgumentError(msg, rank=self.rank, size=self.size, op=_OP)
        if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 2:
            raise bad(f"group_size={group_size!r}: a group averages at least 2 ranks")
        if group_size > c.size:
            raise bad(f"group_size={group_size} is larger than the {c.size} rank(s) of the "
                      "communicator")
        for name, v in (("total_steps", total_steps), ("sync_every", sync_every)):
            if not isinstance(v, int) or v < 0:
                raise bad(f"{name}={v!r}: use a non-negative integer")
        if max_groups is not None and (not isinstance(max_groups, int) or max_groups < 1):
            raise bad(f"max_groups={max_groups!r}: use a positive integer")
        lo, init, hi = deadline
        if not 0 < lo <= init <= hi:
            raise bad(f"deadline={deadline!r}: need 0 < lo <= initial <= hi (seconds)")
        if timeout <= 0:
            raise bad(f"timeout={timeout!r}: use a positive number of seconds")
        if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
            raise CommError("the P-Reduce controller is a thread on rank 0 and needs "
                            f"MPI_THREAD_MULTIPLE; MPI gave level {MPI.Query_thread()} (start "
                            "MPI through hpcdl.init, or set mpi4py.rc.thread_level='multiple')",
                            rank=self.rank, size=self.size, op=_OP)
        start_step = 0
        if state is not None:  # checked wherever given (the main job passes it everywhere)
            try:
                start_step, saved = int(state["steps"]), float(state["deadline"])
            except (KeyError, TypeError, ValueError) as exc:
                raise bad(f"state={state!r}: expected PReduce.sync_state()'s dict ({exc})") \
                    from None
            if start_step < 0:
                raise bad(f"state steps={start_step}: must be >= 0")
            init = min(hi, max(lo, saved))  # the saved deadline, within this run's bounds
        self.timeout = float(timeout)
        self.max_groups = max_groups or default_max_groups(c.size, group_size)
        self._ctl = c.mpi.Dup()     # control messages only
        self._data = c.mpi.Dup()    # averaging: full syncs and every group's messages
        self._full = MPICommunicator(self._data)
        self._full.cuda_aware = c.cuda_aware
        self._groups = GroupAverager(self._full)
        self.stopped = False
        self.calls = 0
        self.averaged = 0  # calls whose group had a partner (or was a full sync)
        self.controller: Controller | None = None
        if self.rank == 0:
            self.controller = Controller(self._ctl, group_size, Deadline(lo, init, hi),
                                         self.max_groups, total_steps, sync_every, timeout,
                                         start_step=start_step)
            self.controller.start()

    def __call__(self, x: Any) -> Reply:
        """Report one local step done and average ``x`` in place over the group the
        controller assigns. Returns the controller's ``Reply`` (kind ``group``,
        ``sync`` or ``stop``; ``members``; ``reason``; ``step``)."""
        return self._exchange(x, final=False)

    def sync_state(self) -> dict[str, Any] | None:
        """The controller's state at the last full sync, what a checkpoint taken there must
        save to continue the run (``steps``: ready messages counted over all ranks,
        ``deadline``: the adapted group deadline, ``replies``: the length of the
        controller's log then). Rank 0 only (None elsewhere, and before the first sync);
        read it after this rank's own sync reply (see Controller.synced)."""
        if self.controller is None or self.controller.synced is None:
            return None
        return dict(self.controller.synced)

    def close(self, x: Any) -> Reply | None:
        """This rank takes no more steps: wait, joining any full sync, until every rank
        has closed (or the step budget ran out), then one final full average of
        ``x``. No-op (returns None) once this rank got ``stop``."""
        if self.stopped:
            return None
        reply = self._exchange(x, final=True)
        while reply.kind != STOP:  # a full sync of the ranks still training: take part
            reply = self._receive(x, self._wait_reply())
        return reply

    def long_phase(self, what: str = "a long phase") -> Any:
        """Context manager around a long stretch between calls (evaluation, a checkpoint):
        the controller hears a heartbeat every quarter ``timeout``, so neither it nor the
        ranks waiting in a full sync take this rank for a stuck one (hpcdl/heartbeat.py).
        After the session's stop (the last evaluation) there is nobody to tell: a no-op."""
        import contextlib

        if self.stopped:
            return contextlib.nullcontext()

        def beat() -> list:
            return [self._ctl.Isend(bytearray(0), dest=0, tag=TAG_HEARTBEAT)]

        return LongPhase(beat, self.timeout / 4, what)

    def __enter__(self) -> "PReduce":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass  # close needs the caller's buffer; an exception aborts the job anyway

    # internals ---------------------------------------------------------------------
    def _exchange(self, x: Any, final: bool) -> Reply:
        if self.stopped:
            raise InvalidArgumentError("called after this rank's session got 'stop'; make a "
                                       "new PReduce for another run", rank=self.rank,
                                       size=self.size, op=_OP)
        buf = as_buffer(x, arg="x", writable=True, rank=self.rank, op=_OP)
        signature = f"{dtype_name(buf.dtype)}{list(buf.shape)}"
        self._ctl.send(tuple(Ready(self.rank, signature, final)), dest=0, tag=TAG_READY)
        return self._receive(x, self._wait_reply())

    def _receive(self, x: Any, reply: Reply) -> Reply:
        self.calls += 1
        if reply.kind == ERROR:
            if reply.reason.startswith(FULL_SYNC_ERROR):
                self._finish()  # the controller ended the session
            raise MismatchError(reply.reason, rank=self.rank,
                                size=self.size, op=_OP)
        if reply.kind == GROUP:
            if len(reply.members) > 1:
                self._groups.average(x, reply.members, _OP)
                self.averaged += 1
        else:  # a full sync, periodic, forced or final
            allreduce(x, op="avg", comm=self._full)
            self.averaged += 1
        if reply.kind == STOP:
            self._finish()
        return reply

    def _wait_reply(self) -> Reply:
        from mpi4py import MPI

        with waiting("preduce reply", self._ctl, (0,)):   # seen by the watchdog
            self._poll_reply()
        return Reply(*self._ctl.recv(source=0, tag=TAG_REPLY, status=MPI.Status()))

    def _poll_reply(self) -> None:
        start = time.monotonic()
        spins = 0
        # The controller times out first and names the rank that is still computing; a
        # member waiting as long as it would race it and could only blame rank 0.
        limit = 1.5 * self.timeout + 2.0
        while not self._ctl.Iprobe(0, TAG_REPLY):
            if self._ctl.Iprobe(0, TAG_ALIVE):   # a rank we wait for is in a long phase
                self._ctl.Recv(bytearray(0), source=0, tag=TAG_ALIVE)
                start = time.monotonic()
            ctl = self.controller
            if ctl is not None and ctl.error is not None:  # ended cleanly: its stop is in flight
                raise CommError(f"the controller thread failed: {ctl.error!r}", rank=self.rank,
                                size=self.size, op=_OP)
            if time.monotonic() - start > limit:
                raise CommError(f"no reply from the controller on rank 0 within "
                                f"{limit:.0f} s", rank=self.rank, size=self.size, op=_OP)
            spins += 1
            if spins > 20:  # a reply usually comes within microseconds; then stop burning a core
                time.sleep(0.0002)

    def _finish(self) -> None:
        self.stopped = True
        if self.controller is not None and not self.controller.join(self.timeout):
            raise CommError(f"the controller thread did not end within {self.timeout:.0f} s",
                            rank=self.rank, size=self.size, op=_OP)
        self._full = None  # type: ignore[assignment]
        self._data.Free()
        self._ctl.Free()
