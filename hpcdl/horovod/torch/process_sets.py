"""Horovod process sets over hpcdl subgroups (``hpcdl.subgroup``).

Each set holds two communicators over its ranks: ``comm`` carries the data
(hpcdl collectives, their progress thread) and ``meta`` carries the
shape/dtype agreement check each Horovod call makes first (Horovod's
coordinator does the same), so the check never interleaves with queued data
collectives on one communicator.
"""

from __future__ import annotations

from typing import Any, Sequence

from ...errors import InvalidArgumentError
from ...groups import subgroup
from .state import context

__all__ = ["ProcessSet", "global_process_set", "add_process_set", "remove_process_set",
           "resolve", "reset_process_sets", "register_process_sets"]


class ProcessSet:
    """A set of world ranks that collectives can be limited to (``process_set=``)."""

    def __init__(self, ranks_or_comm: Any = None) -> None:
        self.ranks: list[int] | None = None
        self.process_set_id: int | None = None
        self.comm: Any = None
        self.meta: Any = None
        if ranks_or_comm is not None:
            if hasattr(ranks_or_comm, "Get_group"):  # an mpi4py communicator
                from mpi4py import MPI

                world = MPI.COMM_WORLD.Get_group()
                mine = ranks_or_comm.Get_group()
                n = mine.Get_size()
                ranks_or_comm = MPI.Group.Translate_ranks(mine, list(range(n)), world)
            self.ranks = sorted(int(r) for r in ranks_or_comm)

    def _bind(self, comm: Any, set_id: int) -> None:
        self.comm = comm
        self.meta = comm.split(0, comm.rank, name=f"horovod:meta{set_id}") if comm else None
        self.process_set_id = set_id

    def included(self) -> bool:
        return self.comm is not None

    def size(self) -> int:
        return len(self.ranks) if self.ranks is not None else 0

    def rank(self) -> int:
        """This rank's index in the set, -1 when not a member."""
        return self.comm.rank if self.comm is not None else -1

    def __repr__(self) -> str:
        return f"ProcessSet(process_set_id={self.process_set_id}, ranks={self.ranks})"


global_process_set = ProcessSet()
_SETS: dict[int, ProcessSet] = {}


def reset_process_sets(comm: Any) -> None:
    """At ``init``: the global set is every rank of hpcdl's communicator."""
    _SETS.clear()
    global_process_set.ranks = list(range(comm.size))
    global_process_set._bind(comm, 0)
    _SETS[0] = global_process_set


def register_process_sets(sets: Sequence[Any]) -> None:
    for s in sets:
        add_process_set(s)


def add_process_set(process_set: "ProcessSet | Sequence[int]") -> ProcessSet:
    """Collective over all ranks: create the set (a subgroup) and return it."""
    ctx = context()
    ps = process_set if isinstance(process_set, ProcessSet) else ProcessSet(process_set)
    if ps.ranks is None or not ps.ranks:
        raise InvalidArgumentError("add_process_set needs a non-empty list of ranks",
                                   rank=ctx.rank, op="add_process_set")
    for existing in _SETS.values():
        if existing.ranks == ps.ranks:
            raise InvalidArgumentError(f"a process set with ranks {ps.ranks} already exists "
                                       f"(id {existing.process_set_id})", rank=ctx.rank,
                                       op="add_process_set")
    sub = subgroup(ps.ranks, comm=ctx.comm)
    ps._bind(sub, max(_SETS) + 1)
    _SETS[ps.process_set_id] = ps
    return ps


def remove_process_set(process_set: ProcessSet) -> bool:
    """Forget the set (its communicators stay cached by hpcdl); False if unknown or global."""
    if process_set.process_set_id in (None, 0) or process_set.process_set_id not in _SETS:
        return False
    del _SETS[process_set.process_set_id]
    process_set.process_set_id = None
    return True


def resolve(process_set: ProcessSet | None, op: str) -> ProcessSet:
    """The set to run ``op`` on; raise if Horovod is not initialized or this rank is outside."""
    ctx = context()
    ps = global_process_set if process_set is None else process_set
    if ps.comm is None:
        raise InvalidArgumentError(f"this rank is not a member of {ps!r}", rank=ctx.rank,
                                   size=ctx.size, op=op)
    return ps
