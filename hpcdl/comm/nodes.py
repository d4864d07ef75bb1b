"""Which ranks share a node: the one owner of a communicator's node layout.

The layout is a pair of communicators (this node's ranks, and the ranks with
this local rank on every node) that the hierarchical algorithms run over. It is
decided here and cached on the communicator (``comm._hpcdl_nodes``, written by
no other module).

One rule for every communicator: a rank's node is the shared-memory domain
MPI puts it in (``Split_type(COMM_TYPE_SHARED)``, what the MPI library knows
of the machine, not a name a container or a network namespace may change), or
with ``HPCDL_RANKS_PER_NODE=k`` the block ``world rank // k`` (emulated nodes).
:func:`job_layout` decides it once, at ``hpcdl.init()``, on the job's
communicator, and keeps this process's *node key* (the smallest world rank
on its node, or its block). The default communicator gets that layout;
any other communicator (a subgroup, a Dup, a split) groups its ranks by the
same key (:func:`node_index`), so both give the same nodes by construction.
Only where no ``hpcdl.init()`` over the whole job ran in this process (an
in-process fake communicator) does the key fall back to the host name.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, Mapping

from mpi4py import MPI

from ..errors import InvalidArgumentError
from .base import Communicator
from .mpi import MPICommunicator

__all__ = ["NodeComms", "node_comms", "attach_node_comms", "job_layout", "node_index", "node_key"]


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


NodeKey = tuple  # (0, smallest world rank on the node | block) or (1, host name)

_job_key: NodeKey | None = None  # this process's node, as job_layout decided it


def _per_node(env: Mapping[str, str], rank: int, size: int) -> int | None:
    per_node = env.get("HPCDL_RANKS_PER_NODE")
    if not per_node:
        return None
    if not per_node.isdigit() or int(per_node) < 1:
        raise InvalidArgumentError(f"HPCDL_RANKS_PER_NODE={per_node!r}; use a positive "
                                   "integer", rank=rank, size=size, op="init")
    return int(per_node)


def job_layout(comm: MPICommunicator, env: Mapping[str, str],
               launcher_local: int | None) -> tuple[MPICommunicator, int, int, str]:
    """The job's layout for ``hpcdl.init()``: (local communicator, node index, node
    count, how it was decided). ``launcher_local`` is the launcher's local rank, if any.
    Also records this process's node key, which every other communicator's layout uses."""
    global _job_key
    rank, size = comm.rank, comm.size
    world = MPI.COMM_WORLD.Get_rank()
    k = _per_node(env, rank, size)
    if k is not None:
        key: NodeKey = (0, world // k)
        local = MPICommunicator(comm.mpi.Split(world // k, rank))
        source = f"HPCDL_RANKS_PER_NODE={k} (emulated nodes)"
    else:
        local = MPICommunicator(comm.mpi.Split_type(
            MPI.COMM_TYPE_SHARED, key=rank if launcher_local is None else launcher_local))
        key = (0, min(local.allgather_object(world)))  # not the leader: order-independent
        source = "MPI shared-memory split"
        if launcher_local is not None:
            source += (" (agrees with the launcher's local rank)" if local.rank == launcher_local
                       else f" (launcher said local rank {launcher_local}, MPI says {local.rank})")
    keys = sorted(set(comm.allgather_object(key)))
    if comm.size == MPI.COMM_WORLD.Get_size():
        # only a layout of the whole job names each node the same way in every process
        # (init(comm=part) sees part of a node: its smallest world rank may differ)
        _job_key = key
    return local, keys.index(key), len(keys), source


def node_key() -> NodeKey:
    """This process's node: the one :func:`job_layout` decided, or where no
    ``hpcdl.init()`` ran here (in-process fake ranks) the host name."""
    return _job_key if _job_key is not None else (1, socket.gethostname())


def node_index(comm: Communicator) -> int:
    """This rank's node on ``comm``: its ranks grouped by :func:`node_key`, nodes
    numbered in key order (collective)."""
    keys = comm.allgather_object(node_key())
    return sorted(set(keys)).index(keys[comm.rank])


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
