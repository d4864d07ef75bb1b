"""Checks that every communicator gets the same node layout as the job (comm/nodes.py).

A layout is compared as a partition of world ranks: which world ranks share a node.
Used by tests/test_node_layout.py in-process and by tests/jobs/node_layout_job.py in a
fresh job with emulated nodes (HPCDL_RANKS_PER_NODE needs a fresh job).
"""

from __future__ import annotations

import os
import socket

from mpi4py import MPI

from hpcdl.comm.nodes import node_comms


def partition(comm, local) -> set[frozenset[int]]:
    """The world ranks of each node, as ``local`` (this rank's node within ``comm``) says."""
    world = MPI.COMM_WORLD.Get_rank()
    mine = frozenset(local.allgather_object(world))
    return set(comm.allgather_object(mine))


def layout_errors(ctx) -> list[str]:
    """Compare the default communicator's layout with those of a Dup, a reversed split and
    (from 2 ranks) a subgroup without rank 0; and with MPI's shared-memory split and the
    host names (or the emulated blocks). Collective over ``ctx.comm``."""
    errors = []
    size = ctx.size
    job = partition(ctx.comm, node_comms(ctx.comm).local)
    if len(job) != ctx.num_nodes:
        errors.append(f"{len(job)} nodes in the layout, context says {ctx.num_nodes}")
    per_node = os.environ.get("HPCDL_RANKS_PER_NODE")
    if per_node:  # emulated: blocks of world ranks
        k = int(per_node)
        expect = {frozenset(range(b, min(b + k, size))) for b in range(0, size, k)}
    else:  # what MPI knows, and the host names agree on a real machine
        shared = ctx.comm.mpi.Split_type(MPI.COMM_TYPE_SHARED)
        world = MPI.COMM_WORLD.Get_rank()
        expect = set(ctx.comm.allgather_object(frozenset(shared.allgather(world))))
        shared.Free()
        hosts = ctx.comm.allgather_object(socket.gethostname())
        if len(set(hosts)) != len(expect):
            errors.append(f"{len(set(hosts))} host names but {len(expect)} shared-memory nodes")
    if job != expect:
        errors.append(f"default communicator: {sorted(map(sorted, job))}, "
                      f"expected {sorted(map(sorted, expect))}")
    others = {"dup": ctx.comm.split(0, ctx.rank, name="test:layout:dup"),
              "reversed": ctx.comm.split(0, size - 1 - ctx.rank, name="test:layout:rev")}
    sub = ctx.comm.split(0 if ctx.rank > 0 else 1, ctx.rank, name="test:layout:sub")
    for name, comm in others.items():
        got = partition(comm, node_comms(comm).local)
        if got != job:
            errors.append(f"{name}: {sorted(map(sorted, got))} != {sorted(map(sorted, job))}")
    if size > 1 and ctx.rank > 0:  # ranks 1..n-1: the job's nodes, less rank 0
        got = partition(sub, node_comms(sub).local)
        want = {n - {0} for n in job} - {frozenset()}
        if got != want:
            errors.append(f"subgroup 1..{size - 1}: {sorted(map(sorted, got))} != "
                          f"{sorted(map(sorted, want))}")
    return errors
