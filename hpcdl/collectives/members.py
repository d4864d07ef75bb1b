"""Some ranks of an MPI communicator, used as a communicator of their own without making one.

Why not ``MPI_Comm_create_group``: every MPI communicator takes a context id,
and MPICH-family libraries have about 2,000 of them. Dynamic P-Reduce meets a
new member set at almost every step (at 64 ranks with groups of up to 4 there
are C(64,2) + C(64,3) + C(64,4) = 679,056 of them), so a communicator per
group, even cached, runs out of ids and grows without bound. A
:class:`MemberComm` is a view instead: ranks ``0..k-1`` of the view are the
parent's ranks ``members``, and its messages are point-to-point messages on
the parent, with the parent's ranks. Re-pointing it at other members costs
nothing.

Why messages of different views cannot be confused on one parent: MPI
matches a receive by (communicator, source, tag) in the order the messages
were sent (its non-overtaking rule). A rank takes part in one operation at a
time; two ranks that meet in several operations (views or collectives of the
parent) meet in the same order, and both run the same algorithm on the same
sizes, so each receive matches the message its peer sent for that same
operation. The algorithms use hpcdl's reserved tags (``internal_tag``), as on
any communicator; the ranks' own tags stay theirs.

What the view offers is what :func:`hpcdl.allreduce` needs: point-to-point,
``allreduce`` (recursive doubling over point-to-point: the "native"
algorithm of a view) and ``allgather_object`` (``HPCDL_DEBUG=1``'s check).
It cannot ``split``: split its parent. ``cuda_aware`` is False, so device
buffers go through host staging (the parent's CUDA-aware path would need an
MPI collective over exactly these ranks, which is what the view avoids).
"""

from __future__ import annotations

import pickle
from typing import Any, Sequence

import numpy as np

from ..comm.base import CommState, internal_tag
from ..errors import InvalidArgumentError
from ..ops import ReduceOp
from .tree import tree_allreduce

__all__ = ["MemberComm"]

# Reserved tag 5 (comm/base.py): pickled objects. Ring takes 0-1, tree 2-4.
_TAG_OBJECT = 5


class MemberComm(CommState):
    """Ranks ``members`` of ``parent`` (an :class:`~hpcdl.comm.mpi.MPICommunicator`),
    ranked in the order given. Only members use it; all of them with the same tuple."""

    def __init__(self, parent: Any, members: Sequence[int]) -> None:
        self.parent = parent
        self.tag_ub = parent.tag_ub
        self.size = len(members)
        self.members: tuple[int, ...] = ()
        self.rank = -1
        self.point_to(members)

    def point_to(self, members: Sequence[int]) -> None:
        """Use this view for another member set of the same size (a local call).

        The size is fixed because what is cached on a communicator (the fast path's
        plans, scratch buffers) may depend on it."""
        members = tuple(int(m) for m in members)
        p = self.parent
        if len(members) != self.size or len(set(members)) != self.size \
                or not all(0 <= m < p.size for m in members) or p.rank not in members:
            raise InvalidArgumentError(f"members {list(members)} must be {self.size} distinct "
                                       f"ranks of a communicator of size {p.size}, this rank "
                                       f"({p.rank}) among them", rank=p.rank, size=p.size,
                                       op="MemberComm")
        self.members = members
        self.rank = members.index(p.rank)

    def __repr__(self) -> str:
        return f"MemberComm(rank={self.rank}, members={list(self.members)})"

    # point-to-point: the parent's, with ranks translated -----------------------------
    def send(self, buf: np.ndarray, dest: int, tag: int = 0) -> None:
        self.parent.send(buf, self.members[dest], tag)

    def recv(self, buf: np.ndarray, source: int, tag: int = 0) -> None:
        self.parent.recv(buf, self.members[source], tag)

    def sendrecv(self, sendbuf: np.ndarray, dest: int, recvbuf: np.ndarray, source: int,
                 tag: int = 0) -> None:
        self.parent.sendrecv(sendbuf, self.members[dest], recvbuf, self.members[source], tag)

    def isend(self, buf: np.ndarray, dest: int, tag: int = 0) -> Any:
        return self.parent.isend(buf, self.members[dest], tag)

    def irecv(self, buf: np.ndarray, source: int, tag: int = 0) -> Any:
        return self.parent.irecv(buf, self.members[source], tag)

    def waitall(self, requests: Sequence[Any]) -> None:
        self.parent.waitall(requests)

    # collectives over the members, made of the point-to-point above ------------------
    def allreduce(self, buf: np.ndarray, op: ReduceOp) -> None:
        """In place, by recursive doubling: every member ends with bitwise the same result."""
        tree_allreduce(self, buf, op)

    def allgather_object(self, obj: Any) -> list[Any]:
        """Every member's ``obj``, in member order: a length, then the pickle, to each."""
        tag = internal_tag(self, _TAG_OBJECT)
        mine = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
        others = [r for r in range(self.size) if r != self.rank]
        lengths = {r: np.empty(1, np.int64) for r in others}
        length = np.array([mine.size], np.int64)
        self.waitall([self.isend(length, r, tag) for r in others]
                     + [self.irecv(lengths[r], r, tag) for r in others])
        # the same tag again: between two ranks MPI delivers in order, length first
        data = {r: np.empty(int(lengths[r][0]), np.uint8) for r in others}
        self.waitall([self.isend(mine, r, tag) for r in others]
                     + [self.irecv(data[r], r, tag) for r in others])
        return [obj if r == self.rank else pickle.loads(data[r].tobytes())
                for r in range(self.size)]
