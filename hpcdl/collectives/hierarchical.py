"""Hierarchical allreduce: reduce inside each node, allreduce across nodes, share inside.

Inside a node ranks talk through shared memory; between nodes through the
network, which is slower by one or two orders of magnitude. With ``L`` ranks
on each of ``M`` nodes:

1. ring reduce-scatter inside the node: local rank ``i`` ends with the node's
   sum of one ``1/L`` shard of the buffer;
2. the ``M`` ranks holding the same shard (same local rank, one per node)
   allreduce it across nodes: every local rank carries ``1/L`` of the
   inter-node traffic, so all the node's network links work at once;
3. ring allgather inside the node.

Cost: ``2 (L - 1) (alpha_l + beta_l N / L)`` inside plus the cross-node
allreduce of ``N / L`` bytes over ``M`` ranks (ring:
``2 (M - 1) (alpha_n + beta_n N / (L M))``). Against a flat ring over all
``L M`` ranks it sends the same bytes over the network but crosses it in
``2 (M - 1)`` steps instead of ``2 (L M - 1)``.

Nodes of different sizes (``HPCDL_RANKS_PER_NODE`` not dividing the job, or
an uneven allocation) have no common shard layout: then each node allreduces
locally, the node leaders (local rank 0) allreduce across nodes, and each
leader broadcasts inside its node.

Which ranks share a node: on the default communicator the layout of
``hpcdl.init()`` (MPI's shared-memory split or ``HPCDL_RANKS_PER_NODE``); on
any other communicator blocks of ``HPCDL_RANKS_PER_NODE`` ranks when set,
else the host name. Built once per communicator and cached on it
(:mod:`hpcdl.comm.nodes`, the one owner of the layout).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..comm.base import Communicator
from ..comm.nodes import NodeComms, node_comms
from ..ops import ReduceOp
from .blocks import CHUNK_BYTES, block_bounds
from .catalog import ALLREDUCE
from .ring import ring_allgather, ring_reduce_scatter
from .select import choose_flat

__all__ = ["NodeComms", "node_comms", "hierarchical_allreduce", "hierarchical_allreduce_nodes"]


def _flat(comm: Communicator, buf: np.ndarray, op: ReduceOp) -> None:
    """Allreduce over one level with the best flat algorithm for this size."""
    ALLREDUCE[choose_flat(comm, buf.nbytes, buf.dtype)](comm, buf, op)


def hierarchical_allreduce_nodes(nodes: NodeComms, buf: np.ndarray, op: ReduceOp) -> None:
    """The algorithm itself, over an explicit node layout (in place, avg as sum)."""
    local, cross = nodes.local, nodes.cross
    if not nodes.even:
        if local.size > 1:
            _flat(local, buf, op)
        if local.rank == 0 and cross.size > 1:
            _flat(cross, buf, op)
        if local.size > 1:
            local.bcast(buf, 0)
        return
    if local.size == 1:
        _flat(cross, buf, op)
        return
    bounds = block_bounds(buf.size, local.size)
    chunk = max(1, CHUNK_BYTES // buf.dtype.itemsize)
    owned = ring_reduce_scatter(local, buf, op, bounds, chunk)
    if cross.size > 1:
        _flat(cross, buf[bounds[owned]:bounds[owned + 1]], op)
    ring_allgather(local, buf, owned, bounds, chunk)


def hierarchical_allreduce(comm: Communicator, buf: np.ndarray, op: ReduceOp) -> Any:
    """In place over ``comm``; ``avg`` is reduced as a sum (the caller divides)."""
    if comm.size == 1 or buf.size == 0:
        return
    hierarchical_allreduce_nodes(node_comms(comm), buf, op)
