"""Group communicators, made with ``MPI_Comm_create_group`` and cached by member set.

``Create_group`` is collective over the members only, so a group of two
forms while the other ranks keep computing (``MPI_Comm_split`` would need
every rank). Every member of a group got the same sorted member tuple from
the controller, and a member set is created the first time any of its
members meets it, so all members hit or miss the cache together.
At ``n`` ranks there are at most ``sum_{k=2..P} C(n, k)`` distinct groups
(10 at 4 ranks with P = 2 or 3); each costs one context id and is reused.
"""

from __future__ import annotations

from typing import Any

from ..comm.mpi import MPICommunicator

__all__ = ["GroupCache"]

_CREATE_TAG = 7  # a rank is in one Create_group at a time: one tag suffices


class GroupCache:
    __slots__ = ("parent", "cuda_aware", "_cache")

    def __init__(self, parent: Any, cuda_aware: bool) -> None:
        self.parent = parent            # mpi4py intracommunicator the groups are made from
        self.cuda_aware = cuda_aware
        self._cache: dict[tuple[int, ...], MPICommunicator] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def get(self, members: tuple[int, ...]) -> MPICommunicator:
        sub = self._cache.get(members)
        if sub is None:
            group = self.parent.Get_group().Incl(list(members))
            try:
                sub = MPICommunicator(self.parent.Create_group(group, _CREATE_TAG))
            finally:
                group.Free()
            sub.cuda_aware = self.cuda_aware
            self._cache[members] = sub
        return sub

    def free(self) -> None:
        """Free every group (collective per group: all ranks free in the same sorted order)."""
        for key in sorted(self._cache):
            self._cache[key].mpi.Free()
        self._cache.clear()
