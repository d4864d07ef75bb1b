"""A communicator that loses its dead ranks (FT mode, ``HPCDL_FT=1``; docs/fault-tolerance.md).

The parameter server's workers and P-Reduce's ranks meet at a few collective points
(an epoch's loss sum and evaluation, a full average). :meth:`Survivors.run` runs such
a block; in FT mode every surviving rank then agrees (``MPI_Comm_agree``) that it
succeeded everywhere. If a rank died, the block failed somewhere: with
``on_failure="shrink"`` the survivors revoke and shrink the communicator and run the
block again among themselves, so all of them return the same answer; otherwise every
survivor raises :class:`~hpcdl.errors.ProcessFailed` naming the dead. Outside FT mode
it is the block alone.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from .comm.mpi import MPICommunicator
from .errors import ProcessFailed
from .ulfm import agree, failed_ranks, ft_enabled, is_process_failure, revoke, shrink

__all__ = ["Survivors"]


class Survivors:
    """``comm``: an hpcdl MPICommunicator (``ParameterServer.worker_comm``, a P-Reduce
    session's data communicator); ``ranks``: its members' ranks in the job, in its rank
    order (to name the dead, and to map a survivor's old rank to its new one)."""

    def __init__(self, comm: MPICommunicator, ranks: list[int], on_failure: str) -> None:
        self.comm = comm
        self.ranks = list(ranks)
        self.on_failure = on_failure
        self.lost: list[int] = []                  # job ranks, in the order they were lost
        self.shrinks: list[dict[str, Any]] = []    # {lost_ranks, ranks_after, recovery_s}

    def local(self, members: "tuple[int, ...] | list[int]") -> tuple[int, ...]:
        """``members`` (ranks of the original communicator) as ranks of the current one;
        a member that is gone raises :class:`~hpcdl.errors.ProcessFailed`."""
        gone = [m for m in members if m not in self.ranks]
        if gone:
            raise ProcessFailed(f"rank(s) {gone} are gone (shrunk away)", failed=tuple(gone),
                                rank=self.ranks[self.comm.rank], op="survivors")
        return tuple(self.ranks.index(m) for m in members)

    def run(self, block: Callable[[MPICommunicator], Any], op: str) -> Any:
        """``block(comm)``: collective over the living workers, safe to run again."""
        while True:
            t0 = time.perf_counter()
            try:
                result, ok = block(self.comm), True
            except Exception as exc:  # noqa: BLE001 - only a peer's death is handled
                if not (ft_enabled() and is_process_failure(exc)):
                    raise
                result, ok = None, False
                revoke(self.comm.mpi)   # a peer still waiting on this rank gets out
            if not ft_enabled() or agree(self.comm.mpi, ok):
                return result
            self._shrink(op, t0)

    def _shrink(self, op: str, t0: float) -> None:
        mpi = self.comm.mpi
        me = self.ranks[mpi.Get_rank()]
        if self.on_failure != "shrink":
            dead = [self.ranks[r] for r in failed_ranks(mpi)]
            raise ProcessFailed(f"rank(s) {dead} died during {op} (process failure); run "
                                "with --on-failure shrink to go on without them", rank=me,
                                op=op, failed=tuple(dead))
        new = shrink(mpi)
        alive = new.allgather(me)   # the new communicator's members, in its rank order
        dead = [r for r in self.ranks if r not in alive]
        cuda_aware = getattr(self.comm, "cuda_aware", False)
        self.comm = MPICommunicator(new)
        self.comm.cuda_aware = cuda_aware
        self.ranks = list(alive)
        self.lost.extend(dead)
        self.shrinks.append({"lost_ranks": dead, "ranks_after": new.Get_size(),
                             "recovery_s": time.perf_counter() - t0, "op": op})
