"""hpcdl.pipeline: splitting, and torch's schedules over the rank grid against one process.

At every rank count N the pipeline has S = N stages (D = 1); at N = 4 also
S = 2 stages x D = 2 replicas. The reference is the same model, unsplit, on the
whole (global) batch in this process.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import hpcdl.pipeline as hp
from hpcdl.errors import InvalidArgumentError

# 8 layers with parameters (and 8 Tanh): one for each of the 2 virtual stages per rank
# at 4 ranks (a stage of activations only is refused, see the test near the end).
LAYERS = 16
TOL = dict(rtol=1e-5, atol=1e-6)


def make_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(LAYERS // 2):
        layers += [nn.Linear(6 if i == 0 else 12, 12 if i < LAYERS // 2 - 1 else 5), nn.Tanh()]
    return nn.Sequential(*layers)


def grids(size: int) -> list[tuple[int, int]]:
    out = [(size, 1)]
    if size == 4:
        out.append((2, 2))
    return out


def my_part(model: nn.Sequential, grid: hp.Grid, virtual: int = 1):
    parts = hp.split_sequential(model, grid.stages * virtual)
    mine = [parts[i] for i in range(grid.stage, len(parts), grid.stages)]
    return mine if virtual > 1 else mine[0]


def batch(d: int, per_replica: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(d * per_replica, 6, generator=g),
            torch.randint(0, 5, (d * per_replica,), generator=g))


def names_of(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


# -- splitting (no communication) ---------------------------------------------------------
def test_partition_minimises_the_slowest_stage():
    assert hp.partition([1, 1, 1, 1], 2) == [0, 2, 4]
    assert hp.partition([8, 1, 1, 1, 1, 1, 1, 1, 1], 2) == [0, 1, 9]
    assert hp.partition([3, 3, 3], 3) == [0, 1, 2, 3]
    costs = [5.0, 2.0, 7.0, 1.0, 1.0, 4.0, 3.0]
    b = hp.partition(costs, 3)
    worst = max(sum(costs[b[i]:b[i + 1]]) for i in range(3))
    assert worst == 8.0  # [5,2] [7,1] [1,4,3]: no 3-way cut does better
    with pytest.raises(InvalidArgumentError, match="non-empty"):
        hp.partition([1, 2], 3)


def test_every_stage_gets_a_layer_with_parameters_when_it_can():
    # [L T L T ...]: the cheapest max-cost cut alone would give some stages a lone Tanh.
    layers = list(make_model().children())
    for stages in range(2, LAYERS // 2 + 1):
        for balance in ("params", "time"):
            parts = hp.split_sequential(layers, stages, balance=balance,
                                        example=torch.randn(3, 6))
            assert all(any(True for _ in p.parameters()) for p in parts), (stages, balance)
    # fewer layers with parameters than stages: some stage must go without
    parts = hp.split_sequential(layers, LAYERS // 2 + 1)
    assert sum(1 for p in parts if not list(p.parameters())) == 1
    assert hp.partition([1, 1, 1, 1], 2, anchors=[True, True, False, False]) == [0, 1, 4]
    with pytest.raises(InvalidArgumentError, match=r"pipeline.partition: 3 anchors for 4 layers"):
        hp.partition([1, 1, 1, 1], 2, anchors=[True, True, False])
    with pytest.raises(InvalidArgumentError, match="anchors"):
        hp.partition([1, 1], 2, anchors=[True])


def test_split_by_params_time_and_points():
    model = nn.Sequential(nn.Linear(4, 100), nn.ReLU(), nn.Linear(100, 4), nn.ReLU())
    parts = hp.split_sequential(model, 2, balance="params")
    # costs (params + 1) 501, 1, 405, 1: cutting after the first layer gives max 501,
    # after the ReLU 502.
    assert [len(p) for p in parts] == [1, 3]
    assert sum(p.numel() for p in parts[0].parameters()) == 500
    parts = hp.split_sequential(model, 2, balance=[3])
    assert [len(p) for p in parts] == [3, 1]
    parts = hp.split_sequential(model, 2, balance="time", example=torch.randn(8, 4))
    assert sum(len(p) for p in parts) == 4 and all(len(p) for p in parts)
    with pytest.raises(InvalidArgumentError, match="increasing"):
        hp.split_sequential(model, 2, balance=[0])
    with pytest.raises(InvalidArgumentError, match="example"):
        hp.split_sequential(model, 2, balance="time")


def test_build_stage_builds_only_its_layers_and_equals_the_whole():
    builders = [lambda: nn.Linear(4, 64), nn.ReLU, lambda: nn.Linear(64, 64), nn.ReLU,
                lambda: nn.Linear(64, 3)]
    whole = nn.Sequential(*hp.build_layers(builders, range(len(builders)), seed=3))
    parts = [hp.build_stage(builders, 3, s, seed=3) for s in range(3)]
    assert sum(len(p) for p in parts) == len(builders)
    x = torch.randn(5, 4)
    y = x
    for p in parts:
        y = p(y)
    torch.testing.assert_close(y, whole(x), rtol=0, atol=0)
    assert all(not p.is_meta for part in parts for p in part.parameters())


# -- the grid -----------------------------------------------------------------------------
def test_stages_must_divide_the_ranks(ctx):
    with pytest.raises(InvalidArgumentError, match=f"does not divide the {ctx.size} ranks"):
        hp.Grid(stages=ctx.size + 1)
    with pytest.raises(InvalidArgumentError, match="replicas"):
        hp.Grid(stages=1, replicas=ctx.size + 1)


@pytest.mark.mpi(min_size=2)
def test_grid_layout(ctx):
    for s, d in grids(ctx.size):
        g = hp.Grid(stages=s)
        assert (g.stage, g.replica) == (ctx.rank % s, ctx.rank // s)
        assert g.dp_comm.size == d and g.dp_ranks[g.dp_comm.rank] == ctx.rank
        assert torch.distributed.get_world_size(g.pp_group) == s


# -- gradients ----------------------------------------------------------------------------
# Interleaved 1F1B (torch) needs M a multiple of max(1, M // S): M = S, 2S and the odd S + 1
# (written as negative numbers: -k means k * S, -99 means S + 1).
CASES = [(sched, m) for sched in ("gpipe", "1f1b") for m in (1, 2, 3, 4)] + \
        [("interleaved1f1b", m) for m in (-1, -2, -99)]


@pytest.mark.parametrize("schedule,m", CASES)
def test_gradients_equal_the_unpipelined_model(ctx, schedule, m):
    m_arg = m
    for s, d in grids(ctx.size):
        m = m_arg
        grid = hp.Grid(stages=s)
        if m < 0:
            m = s + 1 if m == -99 else -m * s
        model = make_model()
        ref = copy.deepcopy(model)
        x, y = batch(d, 4 * m)
        nn.functional.cross_entropy(ref(x), y).backward()
        virtual = 2 if schedule == "interleaved1f1b" else 1
        part = my_part(model, grid, virtual)
        if schedule == "1f1b" and m < s:
            with pytest.raises(InvalidArgumentError, match="n_microbatches >= stages"):
                hp.Pipeline(part, grid, m, nn.functional.cross_entropy, schedule=schedule)
            continue
        pipe = hp.Pipeline(part, grid, m, nn.functional.cross_entropy, schedule=schedule)
        mods = part if isinstance(part, list) else [part]
        opt = pipe.distributed_optimizer(torch.optim.SGD(
            [p for mod in mods for p in mod.parameters()], lr=0.1))
        mine = slice(grid.replica * 4 * m, (grid.replica + 1) * 4 * m)
        loss = pipe.step(x[mine], y[mine])
        if hasattr(opt, "synchronize"):
            opt.synchronize()  # the average over the D replicas
        names = names_of(model)
        checked = 0
        for mod in mods:
            for p in mod.parameters():
                torch.testing.assert_close(p.grad, ref.get_parameter(names[id(p)]).grad, **TOL)
                checked += 1
        assert checked > 0
        if grid.is_last:
            want = float(nn.functional.cross_entropy(ref(x[mine]), y[mine]).detach())
            assert loss == pytest.approx(want, rel=1e-5)
        else:
            assert loss is None


class _StridedFn(torch.autograd.Function):
    """Identity whose output and input gradient are strided (column-major) tensors."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001 - autograd's signature
        return x.t().contiguous().t()

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001
        return g.t().contiguous().t()


class Strided(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _StridedFn.apply(x)


def test_strided_activations_and_gradients_cross_stages(ctx):
    # The "hpcdl" backend sends strided tensors as they are (no contiguous() hook):
    # every stage's output and input gradient here are column-major.
    grid = hp.Grid(stages=ctx.size)
    model = make_model()
    ref = copy.deepcopy(model)
    part = my_part(model, grid)
    staged = nn.Sequential(Strided(), *part, Strided())
    x, y = batch(1, 8)
    assert not staged(torch.randn(4, 12 if grid.stage else 6)).is_contiguous()
    pipe = hp.Pipeline(staged, grid, 2, nn.functional.cross_entropy, schedule="gpipe")
    loss = pipe.step(x, y)
    nn.functional.cross_entropy(ref(x), y).backward()
    names = names_of(model)
    for p in part.parameters():
        torch.testing.assert_close(p.grad, ref.get_parameter(names[id(p)]).grad, **TOL)
    if grid.is_last:
        expected = float(nn.functional.cross_entropy(ref(x), y).detach())
        assert loss == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_k_steps_equal_single_process_training(ctx, schedule):
    steps, m = 3, 4
    for s, d in grids(ctx.size):
        grid = hp.Grid(stages=s)
        model = make_model(seed=5)
        ref = copy.deepcopy(model)
        ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
        part = my_part(model, grid)
        pipe = hp.Pipeline(part, grid, m, nn.functional.cross_entropy, schedule=schedule)
        opt = pipe.distributed_optimizer(torch.optim.Adam(part.parameters(), lr=1e-2))
        for k in range(steps):
            x, y = batch(d, 2 * m, seed=10 + k)
            ref_opt.zero_grad()
            nn.functional.cross_entropy(ref(x), y).backward()
            ref_opt.step()
            mine = slice(grid.replica * 2 * m, (grid.replica + 1) * 2 * m)
            opt.zero_grad()
            pipe.step(x[mine], y[mine])
            opt.step()
        names = names_of(model)
        for p in part.parameters():
            torch.testing.assert_close(p.detach(), ref.get_parameter(names[id(p)]).detach(),
                                       **TOL)


def test_predict_equals_the_model_and_pads_odd_batches(ctx):
    grid = hp.Grid(stages=ctx.size)
    model = make_model()
    ref = copy.deepcopy(model)
    pipe = hp.Pipeline(my_part(model, grid), grid, 4, nn.functional.cross_entropy,
                       schedule="gpipe")
    x = torch.randn(7, 6)  # 7 does not split into 4: padded, then cut
    out = pipe.predict(x)
    if grid.is_last:
        torch.testing.assert_close(out, ref(x), **TOL)
    else:
        assert out is None


# -- memory -------------------------------------------------------------------------------
def test_1f1b_stores_at_most_s_microbatches(ctx):
    s, m = ctx.size, 2 * ctx.size + 1
    grid = hp.Grid(stages=s)
    x, y = batch(1, 2 * m)
    peaks = {}
    for schedule in ("gpipe", "1f1b"):
        pipe = hp.Pipeline(my_part(make_model(), grid), grid, m, nn.functional.cross_entropy,
                           schedule=schedule)
        pipe.step(x, y)
        pipe.step(x, y)  # the second step: no one-off warm-up in the count
        peaks[schedule] = pipe.peak_activations
        assert pipe.meter.live_microbatches == 0  # everything released after the step
    # GPipe keeps every micro-batch until the backward starts: the counter sees all M.
    assert peaks["gpipe"] == m
    # 1F1B: stage i runs S - i forwards ahead of its first backward.
    assert peaks["1f1b"] <= s
    assert peaks["1f1b"] == s - grid.stage


# -- bad input ----------------------------------------------------------------------------
@pytest.mark.mpi(min_size=2)
def test_a_rank_without_parameters_is_refused_on_every_rank(ctx):
    # One Linear, then activations: stages 1.. hold no parameters. Rank 0 alone would
    # go on into the schedule; instead every rank raises, naming the first such rank.
    grid = hp.Grid(stages=ctx.size)
    model = nn.Sequential(nn.Linear(6, 5), *[nn.Tanh() for _ in range(ctx.size - 1)])
    part = hp.split_sequential(model, ctx.size)[grid.stage]
    want = (f"rank {ctx.rank}.*stage {ctx.rank} holds no parameters.*Tanh" if ctx.rank else
            "rank 0.*rank 1 .*refused the setup.*stage 1 holds no parameters.*Tanh")
    with pytest.raises(InvalidArgumentError, match=want):
        hp.Pipeline(part, grid, 2, nn.functional.cross_entropy, schedule="gpipe")
    # Still in step: a working pipeline right after.
    test_predict_equals_the_model_and_pads_odd_batches(ctx)


def test_batch_not_divisible_by_m_is_a_clear_error(ctx):
    grid = hp.Grid(stages=ctx.size)
    pipe = hp.Pipeline(my_part(make_model(), grid), grid, 4, nn.functional.cross_entropy,
                       schedule="gpipe")
    x, y = batch(1, 10)  # every rank checks before any communication
    with pytest.raises(InvalidArgumentError, match=f"rank {ctx.rank}.*batch of 10 does not "
                                                   "split into n_microbatches=4"):
        pipe.step(x, y)
    with pytest.raises(InvalidArgumentError, match="schedule="):
        hp.Pipeline(my_part(make_model(), grid), grid, 4, nn.functional.cross_entropy,
                    schedule="zigzag")
