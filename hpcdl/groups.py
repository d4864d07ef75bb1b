"""Subgroups: communicators over some of the ranks, for ``comm=``."""

from __future__ import annotations

from typing import Sequence

from .comm.base import UNDEFINED, Communicator
from .errors import InvalidArgumentError
from .context import default_comm

__all__ = ["subgroup"]


def subgroup(ranks: Sequence[int], comm: Communicator | None = None) -> Communicator | None:
    """A communicator over ``ranks`` of ``comm`` (collective: every rank of ``comm`` calls it).

    Members get the new communicator, ranked in the order given; the others get
    ``None``. Created once per distinct ``ranks`` and cached.
    """
    parent = default_comm(comm)
    members = [int(r) for r in ranks]
    if len(set(members)) != len(members) or any(not 0 <= r < parent.size for r in members):
        raise InvalidArgumentError(f"ranks {list(ranks)} must be distinct ranks of a "
                                   f"communicator of size {parent.size}", rank=parent.rank,
                                   op="subgroup")
    inside = parent.rank in members
    key = members.index(parent.rank) if inside else parent.rank
    # non-members join the collective with MPI_UNDEFINED and get no communicator at all
    return parent.split(0 if inside else UNDEFINED, key, name=f"subgroup:{tuple(members)}")
