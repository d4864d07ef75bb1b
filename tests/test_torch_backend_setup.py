"""Registration of the "hpcdl" backend: rank/size from MPI, mismatches, algorithm choice."""

from __future__ import annotations

import types
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

import hpcdl
from hpcdl.errors import InvalidArgumentError
from hpcdl.torch import BackendOptions
from hpcdl.torch.backend import registration
from helpers.torch_backend_util import rank_data, world


def test_rank_and_size_come_from_mpi():
    rank, size = world()
    ctx = hpcdl.get_context()
    assert (rank, size) == (ctx.rank, ctx.size)
    assert dist.get_backend() == "hpcdl"
    assert dist.group.WORLD.getBackendName() == "hpcdl"
    assert dist.group.WORLD.group_name  # set by torch, readable as FSDP2 needs


def test_explicit_rank_or_world_size_that_disagrees_is_named():
    rank, size = world()
    with pytest.raises(InvalidArgumentError, match=rf"rank={rank + 1}.*MPI says rank={rank}"):
        next(registration._mpi_env_rendezvous(f"env://?rank={rank + 1}&world_size={size}"))
    opts = types.SimpleNamespace(global_ranks_in_group=[], group_rank=rank,
                                 group_size=size + 1)
    with pytest.raises(InvalidArgumentError, match=rf"world_size={size + 1}.*"
                                                   rf"world_size={size}"):
        registration._create(opts, None)


def test_matching_explicit_values_pass_the_check():
    rank, size = world()
    # Values equal to MPI's pass; the store every rank then shares is a real one.
    gen = registration._mpi_env_rendezvous(f"env://?rank={rank}&world_size={size}",
                                           timeout=timedelta(seconds=60))
    store, r, n = next(gen)
    assert (r, n) == (rank, size)
    store.set(f"k{rank}", "v")
    assert store.get(f"k{(rank + 1) % size}") == b"v"  # set by the next rank: shared
    hpcdl.barrier()  # rank 0 serves the store: it stays until everyone is done with it


def test_algorithm_pinned_by_pg_options_and_env(monkeypatch):
    rank, size = world()
    everyone = list(range(size))
    ring = dist.new_group(everyone, pg_options=BackendOptions(algorithm="ring"))
    assert ring.algorithm == "ring"
    monkeypatch.setenv("HPCDL_ALGORITHM", "tree")
    tree = dist.new_group(everyone)
    assert tree.algorithm == "tree"
    inputs = [rank_data(20, r, (1000,), torch.float32) for r in range(size)]
    want = sum(i.double() for i in inputs)
    for g in (ring, tree):
        t = inputs[rank].clone()
        dist.all_reduce(t, group=g)
        torch.testing.assert_close(t.double(), want, rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("HPCDL_ALGORITHM", "no-such-algorithm")
    with pytest.raises(InvalidArgumentError, match="no-such-algorithm.*HPCDL_ALGORITHM"):
        registration._algorithm(None, rank)
