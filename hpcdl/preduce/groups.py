"""Group averages over one communicator: no MPI communicator per group.

A P-Reduce group is a different member set at almost every step (at 64
ranks with P = 4 a rank meets tens of thousands of them), so a communicator
per group, even cached, grows without bound and exhausts MPICH's ~2,000
context ids. Each group instead averages over a
:class:`~hpcdl.collectives.members.MemberComm`, a view of the members on the
session's data communicator made of point-to-point messages (why their
messages cannot be confused with another group's: collectives/members.py). One view
per group size is kept and re-pointed, so the memory it holds (scratch
buffers, cached plans) is bounded by ``P - 1`` views.

The algorithm is what ``auto`` picks for a flat communicator of the group's
size (``choose_flat``: recursive doubling for small buffers, the ring for
large ones); every member gets the same member tuple, dtype and shape (the
controller checked them), so all choose alike, and every member ends with
bitwise the same average.
"""

from __future__ import annotations

from typing import Any

from ..buffers import as_buffer
from ..collectives.api import allreduce
from ..collectives.members import MemberComm
from ..collectives.select import choose_flat

__all__ = ["GroupAverager"]


class GroupAverager:
    __slots__ = ("parent", "_views")

    def __init__(self, parent: Any) -> None:
        self.parent = parent          # MPICommunicator whose ranks the members are
        self._views: dict[int, MemberComm] = {}

    def __len__(self) -> int:
        """How many views exist (at most P - 1, however many groups formed)."""
        return len(self._views)

    def average(self, x: Any, members: tuple[int, ...], op_name: str = "preduce") -> None:
        """Average ``x`` in place over ``members`` (sorted parent ranks, this rank among
        them); every member calls it with the same tuple."""
        view = self._views.get(len(members))
        if view is None:
            view = self._views[len(members)] = MemberComm(self.parent, members)
        else:
            view.point_to(members)
        buf = as_buffer(x, arg="x", writable=True, rank=self.parent.rank, op=op_name)
        allreduce(x, op="avg", comm=view, algorithm=choose_flat(view, buf.nbytes, buf.dtype))
