"""Data sharding and broadcasts: DistributedSampler, broadcast_parameters/_optimizer_state/_object."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hpcdl
from helpers.fakes import group_params, on_group
from hpcdl.errors import InvalidArgumentError, MismatchError
from hpcdl.torch import (DistributedOptimizer, DistributedSampler, broadcast_object,
                         broadcast_optimizer_state, broadcast_parameters)

torch.set_num_threads(1)


# -- the sampler, rank by rank in one process (no MPI needed) --------------------------------
@pytest.mark.parametrize("n", [1, 7, 10, 12, 13])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_shards(n, size, drop_last):
    if drop_last and n < size:
        with pytest.raises(InvalidArgumentError):
            DistributedSampler(n, num_replicas=size, rank=0, drop_last=drop_last)
        return
    shards = [list(DistributedSampler(n, num_replicas=size, rank=r, seed=3, drop_last=drop_last))
              for r in range(size)]
    lengths = {len(s) for s in shards}
    assert len(lengths) == 1, "every rank must run the same number of steps"
    everything = [i for s in shards for i in s]
    if drop_last:
        assert len(everything) == (n // size) * size and len(set(everything)) == len(everything)
    else:
        assert len(everything) == -(-n // size) * size and set(everything) == set(range(n))
        assert len(everything) - len(set(everything)) == len(everything) - n  # only the padding


def test_sampler_reshuffles_per_epoch_from_the_seed():
    a = DistributedSampler(100, num_replicas=2, rank=0, seed=5)
    b = DistributedSampler(100, num_replicas=2, rank=0, seed=5)
    first = list(a)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(DistributedSampler(10, num_replicas=2, rank=1, shuffle=False)) == [1, 3, 5, 7, 9]


@pytest.mark.parametrize("n,size", [(1, 3), (7, 2), (10, 4), (13, 5), (12, 3)])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_sampler_gives_torchs_indices(n, size, drop_last, shuffle):
    """The same shards as torch.utils.data.DistributedSampler, epoch after epoch, and
    global_order() (what a resume re-shards) interleaves exactly those shards."""
    if drop_last and n < size:  # torch would hand out empty shards: hpcdl refuses
        with pytest.raises(InvalidArgumentError, match="rank 0.*cannot give every one"):
            DistributedSampler(n, num_replicas=size, rank=0, drop_last=True)
        return
    for epoch in (0, 3):
        for r in range(size):
            ours = DistributedSampler(n, num_replicas=size, rank=r, seed=9, shuffle=shuffle,
                                      drop_last=drop_last)
            theirs = torch.utils.data.DistributedSampler(range(n), num_replicas=size, rank=r,
                                                         seed=9, shuffle=shuffle,
                                                         drop_last=drop_last)
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            want = list(theirs)
            assert list(ours) == want and len(ours) == len(theirs)
            assert ours.global_order()[r::size] == want


# -- across ranks: MPI in the --with-mpi passes, 3 in-process ranks serially ---------------
@pytest.mark.parametrize("group", group_params((3,)))
def test_sampler_agrees_across_ranks(group):
    def body(c):
        s = DistributedSampler(list(range(23)), seed=11, comm=c)
        s.set_epoch(4)
        shards = c.allgather_object(list(s))
        assert len({len(x) for x in shards}) == 1
        assert set(i for x in shards for i in x) == set(range(23))
        assert s.num_replicas == c.size and s.rank == c.rank

    on_group(group, body)


@pytest.mark.parametrize("group", group_params((3,)))
def test_sampler_mismatch_is_an_error(group):
    def body(c):
        err = None
        try:
            DistributedSampler(10 + (c.rank == c.size - 1), comm=c)
        except MismatchError as exc:
            err = exc
        assert (err is None) == (c.size == 1)
        if err is not None:
            assert f"rank {c.size - 1} has length=11" in str(err)

    on_group(group, body)


def test_uneven_dataset_training_finishes(ctx):
    """13 samples, batch 2: every rank runs the same number of steps, nothing hangs."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                               named_parameters=model.named_parameters())
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(13, 3, generator=g),
                                          torch.randint(0, 2, (13,), generator=g))
    steps = []
    for drop_last in (False, True):
        sampler = DistributedSampler(data, seed=2, drop_last=drop_last)
        loader = torch.utils.data.DataLoader(data, batch_size=2, sampler=sampler)
        for epoch in range(2):
            sampler.set_epoch(epoch)
            n = 0
            for x, y in loader:
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                n += 1
            steps.append(n)
    everyone = ctx.comm.allgather_object(steps)
    params = ctx.comm.allgather_object([p.detach().clone() for p in model.parameters()])
    assert all(s == everyone[0] for s in everyone)
    assert all(torch.equal(a, b) for ps in params for a, b in zip(ps, params[0]))


def _seeded(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``model`` with parameters drawn from ``seed`` (a per-thread generator: fake ranks
    share torch's global one)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


@pytest.mark.parametrize("group", group_params((3,)))
def test_broadcast_parameters_state_dict(group):
    def body(c):
        model = _seeded(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)),
                        c.rank)  # a different model on every rank
        model[1].num_batches_tracked += c.rank  # an int64 buffer
        mask = torch.tensor([c.rank % 2 == 0, True])  # bool: travels pickled
        state = model.state_dict()
        state["mask"] = mask
        root = c.size - 1
        broadcast_parameters(state, root_rank=root, comm=c)
        got = c.allgather_object({k: v.clone() for k, v in state.items()})
        assert all(torch.equal(got[r][k], got[root][k]) for r in range(c.size) for k in state)
        assert int(model[1].num_batches_tracked) == root  # in place, through the state dict
        assert bool(mask[0]) == (root % 2 == 0)
        if c.size > 1:  # the values are the root's, not this rank's own
            assert torch.equal(model[0].weight, _seeded(torch.nn.Linear(4, 3), root).weight)

    on_group(group, body)


@pytest.mark.parametrize("group", group_params((3,)))
def test_broadcast_parameters_named_and_list(group):
    def body(c):
        model = _seeded(torch.nn.Linear(5, 2).to(torch.float64), 100 + c.rank)
        broadcast_parameters(model.named_parameters(), comm=c)
        extra = [torch.full((3,), float(c.rank), dtype=torch.bfloat16)]
        broadcast_parameters(extra, root_rank=0, comm=c)
        got = c.allgather_object([p.detach().clone() for p in model.parameters()])
        assert all(torch.equal(a, b) for ps in got for a, b in zip(ps, got[0]))
        assert torch.equal(model.weight, _seeded(torch.nn.Linear(5, 2).to(torch.float64),
                                                 100).weight)
        assert torch.equal(extra[0], torch.zeros(3, dtype=torch.bfloat16))

    on_group(group, body)


@pytest.mark.parametrize("group", group_params((3,)))
def test_broadcast_optimizer_state(group):
    def body(c):
        model = _seeded(torch.nn.Linear(4, 2), 0)
        opt = torch.optim.Adam(model.parameters(), lr=0.01 * (c.rank + 1))
        if c.rank == 0:  # only the root has taken a step: only it has Adam moments
            model(torch.randn(3, 4, generator=torch.Generator().manual_seed(1))).sum().backward()
            opt.step()
        broadcast_optimizer_state(DistributedOptimizer(
            opt, named_parameters=model.named_parameters(), comm=c), root_rank=0, comm=c)
        mine = opt.state_dict()
        got = c.allgather_object(mine)
        for other in got:
            assert other["param_groups"][0]["lr"] == 0.01
            for k, st in other["state"].items():
                for name, v in st.items():
                    assert torch.equal(v, got[0]["state"][k][name]), (k, name)
        assert len(mine["state"]) == 2
        assert float(mine["state"][0]["step"]) == 1.0

    on_group(group, body)


@pytest.mark.parametrize("group", group_params((3,)))
def test_broadcast_object(group):
    def body(c):
        obj = {"epoch": 3, "rank": c.rank, "tensor": torch.arange(3)}
        got = broadcast_object(obj, root_rank=c.size - 1, comm=c)
        assert got["rank"] == c.size - 1 and torch.equal(got["tensor"], torch.arange(3))
        with pytest.raises(InvalidArgumentError, match=f"rank {c.rank}.*root_rank"):
            broadcast_object(obj, root_rank=c.size, comm=c)

    on_group(group, body)


@pytest.mark.parametrize("root", [True, False, -1, 1.0, "0", None])
def test_broadcasts_reject_a_root_rank_that_is_not_an_int(ctx, root):
    """The same root check as hpcdl.broadcast (hpcdl.ops.check_root): a bool is refused,
    not read as rank 0 or 1 (it was, before the check was shared)."""
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for call in (lambda: broadcast_object(1, root_rank=root),
                 lambda: broadcast_parameters(model.state_dict(), root_rank=root),
                 lambda: broadcast_optimizer_state(opt, root_rank=root)):
        with pytest.raises(InvalidArgumentError, match=rf"root_rank={root!r} is not a rank"):
            call()


def test_broadcast_object_takes_a_numpy_integer_root(ctx):
    assert broadcast_object(ctx.rank, root_rank=np.int64(ctx.size - 1)) == ctx.size - 1


def test_broadcast_after_async_ops_keeps_order(ctx):
    """A broadcast issued while async allreduces are queued waits for them (MPI order)."""
    bufs = [torch.full((1000,), float(ctx.rank + 1)) for _ in range(4)]
    handles = [hpcdl.allreduce(b, async_op=True) for b in bufs]
    value = broadcast_object(ctx.rank * 10, root_rank=0)
    for h in handles:
        h.wait()
    total = ctx.size * (ctx.size + 1) / 2
    assert value == 0 and all(torch.all(b == total) for b in bufs)
