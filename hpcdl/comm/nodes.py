"""Which ranks share a node: the one owner of a communicator's node layout.

The layout is a pair of communicators (this node's ranks, and the ranks with
this local rank on every node) that the hierarchical algorithms run over. It is
decided here and cached on the communicator (``comm._hpcdl_nodes``, written by
no other module):

* the default communicator gets the layout of ``hpcdl.init()``
  (:func:`job_layout`: MPI's shared-memory split keyed on the launcher's local
  rank, or blocks of ``HPCDL_RANKS_PER_NODE`` ranks), attached by the runtime;
* any other communicator gets, on first use, blocks of ``HPCDL_RANKS_PER_NODE``
  ranks when set, else ranks grouped by host name (:func:`node_comms`): a
  subgroup or an in-process fake communicator has no shared-memory split of
  its own, and the host name gives the same grouping on a real machine.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Mapping

from mpi4py import MPI

from ..errors import InvalidArgumentError
from .base import Communicator
from .mpi import MPICommunicator

__all__ = ["NodeComms", "node_comms", "attach_node_comms", "job_layout", "node_index"]


@dataclass
class NodeComms:
    """The two communicators a hierarchical algorithm runs over."""

    local: Communicator   # the ranks of this node
    cross: Communicator   # the ranks with this local rank, one per node
    even: bool            # every node has the same number of ranks

    @classmethod
    def build(cls, comm: Communicator, node: int, tag: str = "hpcdl:hier") -> "NodeComms":
        """Collective over ``comm``: ``node`` is this rank's node index (any integer
        that is equal exactly for the ranks of one node)."""
        local = comm.split(node, comm.rank, name=f"{tag}:local")
        cross = comm.split(local.rank, node, name=f"{tag}:cross")
        sizes = comm.allgather_object(local.size)
        return cls(local, cross, len(set(sizes)) == 1)


def job_layout(comm: MPICommunicator, env: Mapping[str, str],
               launcher_local: int | None) -> tuple[MPICommunicator, int, int, str]:
    """The job's layout for ``hpcdl.init()``: (local communicator, node index, node
    count, how it was decided). ``launcher_local`` is the launcher's local rank, if any."""
    rank, size = comm.rank, comm.size
    per_node = env.get("HPCDL_RANKS_PER_NODE")
    if per_node:
        if not per_node.isdigit() or int(per_node) < 1:
            raise InvalidArgumentError(f"HPCDL_RANKS_PER_NODE={per_node!r}; use a positive "
                                       "integer", rank=rank, size=size, op="init")
        k = int(per_node)
        local = MPICommunicator(comm.mpi.Split(rank // k, rank))
        return local, rank // k, -(-size // k), f"HPCDL_RANKS_PER_NODE={k} (emulated nodes)"
    key = rank if launcher_local is None else launcher_local
    local = MPICommunicator(comm.mpi.Split_type(MPI.COMM_TYPE_SHARED, key=key))
    leader = local.bcast_object(rank, root=0)
    leaders = sorted(set(comm.allgather_object(leader)))
    source = "MPI shared-memory split"
    if launcher_local is not None:
        source += (" (agrees with the launcher's local rank)" if local.rank == launcher_local
                   else f" (launcher said local rank {launcher_local}, MPI says {local.rank})")
    return local, leaders.index(leader), len(leaders), source


def node_index(comm: Communicator) -> int:
    """This rank's node on a communicator without an attached layout (collective)."""
    per_node = os.environ.get("HPCDL_RANKS_PER_NODE", "")
    if per_node.isdigit() and int(per_node) > 0:
        return comm.rank // int(per_node)
    hosts = comm.allgather_object(socket.gethostname())
    return sorted(set(hosts)).index(hosts[comm.rank])


def attach_node_comms(comm: Communicator, nodes: NodeComms) -> None:
    """Give ``comm`` the layout ``nodes`` (the runtime, for the default communicator)."""
    comm._hpcdl_nodes = nodes


def node_comms(comm: Communicator) -> NodeComms:
    """The node layout of ``comm`` (collective on first use, cached on ``comm``)."""
    nodes: Any = comm._hpcdl_nodes
    if nodes is None:
        nodes = NodeComms.build(comm, node_index(comm))
        attach_node_comms(comm, nodes)
    return nodes
