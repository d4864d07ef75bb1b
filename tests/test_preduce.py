"""Dynamic P-Reduce (hpcdl/preduce/) at whatever rank count pytest runs under.

The controller's log (rank 0) is replayed to check the guarantees: no group
exceeds P, and every connectivity window connects all ranks (or ends in a
full sync) within ``max_groups`` groups. Group averaging keeps the sum over
ranks, so after the final sync every rank must hold the initial mean.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import hpcdl
from hpcdl.preduce import UnionFind

FAST = (0.0002, 0.002, 0.05)  # deadline bounds that keep the tests quick


def replay(log, n: int, p: int, max_groups: int) -> dict[str, int]:
    """Check the controller's replies; returns counts of what happened."""
    uf, groups, counts = UnionFind(n), 0, {"group": 0, "sync": 0, "stop": 0, "windows": 0}
    for r in log:
        counts[r.kind] = counts.get(r.kind, 0) + 1
        if r.kind == "group":
            assert 1 <= len(r.members) <= p, r
            assert list(r.members) == sorted(set(r.members)), r
            for m in r.members[1:]:
                uf.union(r.members[0], m)
            groups += 1
            if uf.count == 1:
                counts["windows"] += 1
                uf, groups = UnionFind(n), 0
            else:  # still apart: the controller must force a sync by max_groups
                assert groups <= max_groups, (groups, max_groups)
        elif r.kind in ("sync", "stop"):
            assert r.members == tuple(range(n)), r
            uf, groups = UnionFind(n), 0
    return counts


def uneven_steps(session, x, steps: int, rank: int) -> list:
    replies = []
    for i in range(steps):
        time.sleep(0.0005 * ((rank + i) % 3))  # uneven, changing arrival order
        x += 1.0  # a "local step": the same on every rank, so the mean moves by steps
        replies.append(session(x))
    replies.append(session.close(x))
    return replies


def test_bad_group_size_names_rank_and_cause(ctx):
    for bad, cause in ((1, "at least 2"), (0, "at least 2"), (ctx.size + 1, "larger than"),
                       ("2", "at least 2"), (True, "at least 2")):
        with pytest.raises(hpcdl.InvalidArgumentError, match=cause) as e:
            hpcdl.PReduce(bad)
        assert f"rank {ctx.rank}" in str(e.value) and "preduce" in str(e.value)
    if ctx.size >= 2:
        with pytest.raises(hpcdl.InvalidArgumentError, match="deadline"):
            hpcdl.PReduce(2, deadline=(0.1, 0.01, 1.0))


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_groups_bounded_connected_and_mean_kept(ctx, dtype):
    rng = np.random.default_rng(ctx.rank + 17)
    for p in sorted({2, min(3, ctx.size)}):
        start = rng.standard_normal(37).astype(dtype)  # 37: not a multiple of anything
        x = start.copy()
        session = hpcdl.PReduce(p, deadline=FAST, timeout=60)
        replies = uneven_steps(session, x, 25, ctx.rank)
        assert replies[-1].kind == "stop" and session.stopped
        assert all(len(r.members) <= p for r in replies if r.kind == "group")
        expected = np.mean(ctx.comm.allgather_object(start), axis=0) + 25
        tol = 1e-4 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(x, expected, rtol=tol, atol=tol)
        everyone = ctx.comm.allgather_object(x)
        assert all(np.array_equal(everyone[0], v) for v in everyone)
        if ctx.rank == 0:
            counts = replay(session.controller.log, ctx.size, p, session.max_groups)
            assert counts["group"] > 0 and counts["stop"] == 1
            assert not session.controller.alive  # the controller ended with the run


@pytest.mark.mpi(min_size=3)
def test_forced_sync_makes_values_equal(ctx):
    # max_groups=1: any group that leaves the ranks apart forces a full sync next.
    # A step budget (not close) ends the run, so every rank sees every sync in its loop.
    session = hpcdl.PReduce(2, max_groups=1, total_steps=12 * ctx.size, deadline=FAST,
                            timeout=60)
    x = np.random.default_rng(ctx.rank).standard_normal(11)
    seen = {}
    while True:
        time.sleep(0.0003 * ctx.rank)
        x *= 1.5  # a local step that keeps values apart until they are averaged
        r = session(x)
        if r.kind != "group":
            assert r.members == tuple(range(ctx.size))
            assert r.reason in ("connect", "budget")
            seen[(r.step, r.reason)] = x.copy()
        if r.kind == "stop":
            break
    everyone = ctx.comm.allgather_object(seen)
    assert all(set(d) == set(seen) for d in everyone)
    assert sum(reason == "connect" for _, reason in seen) > 0
    for key, value in seen.items():
        assert all(np.array_equal(d[key], value) for d in everyone), key
    if ctx.rank == 0:
        replay(session.controller.log, ctx.size, 2, 1)


@pytest.mark.mpi(min_size=2)
def test_budget_and_epoch_syncs_stop_every_rank(ctx):
    session = hpcdl.PReduce(2, total_steps=8 * ctx.size, sync_every=3 * ctx.size,
                            deadline=FAST, timeout=60)
    x = torch.full((5, 3), float(ctx.rank))
    kinds = []
    while True:
        x += 1
        r = session(x)
        kinds.append((r.kind, r.reason))
        if r.kind == "stop":
            break
    assert r.reason == "budget" and r.step >= 8 * ctx.size
    assert kinds.count(("sync", "every")) == 2  # at 3n and 6n steps; the stop at 8n
    assert session.close(x) is None
    everyone = ctx.comm.allgather_object(x)
    assert all(torch.equal(everyone[0], v) for v in everyone)


@pytest.mark.mpi(min_size=2)
def test_mismatched_shapes_in_a_group_name_ranks(ctx):
    # P = size and a long deadline: all ranks form one group, with different shapes
    session = hpcdl.PReduce(ctx.size, deadline=(5.0, 5.0, 5.0), timeout=60)
    with pytest.raises(hpcdl.MismatchError) as e:
        session(np.zeros(3 + min(ctx.rank, 1)))
    text = str(e.value)
    assert f"rank {ctx.rank}" in text and "float64[3] at rank 0" in text
    assert "float64[4] at rank 1" in text
    session.close(np.zeros(2))  # the session survives a group's mismatch
    assert session.stopped


@pytest.mark.mpi(min_size=2)
def test_function_form_and_torch_averager(ctx):
    x = np.full(4, float(ctx.rank))
    assert len(hpcdl.preduce(x, 2, deadline=FAST).members) <= 2
    hpcdl.preduce_close(x, 2)
    np.testing.assert_allclose(x, (ctx.size - 1) / 2)

    import hpcdl.torch as hdt

    torch.manual_seed(ctx.rank)  # different models on purpose
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    avg = hdt.PReduceAverager(model.parameters(), hpcdl.PReduce(2, deadline=FAST, timeout=60))
    for _ in range(6):
        model.zero_grad()
        model(torch.randn(8, 6)).square().mean().backward()
        with torch.no_grad():  # plain SGD by hand: torch.optim's first step costs ~10 s here
            for q in model.parameters():
                q -= 0.1 * q.grad
        assert avg().kind in ("group", "sync")
    assert avg.close().kind == "stop"
    flat = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    everyone = ctx.comm.allgather_object(flat)
    assert all(torch.equal(everyone[0], v) for v in everyone)
