"""hpcdl.horovod.torch: the behaviour Horovod's test/parallel/test_torch.py checks.

Ported (not copied): shapes 1-3-D, dtypes, every op, in-place and async
variants with poll/synchronize, prescale/postscale, grouped calls, variable
first dimensions in allgather, alltoall splits, reducescatter rows, the
mismatched-shape error on every rank naming the odd rank, broadcasts of
parameters/optimizer state/objects, process sets, Adasum against a NumPy
reference, DistributedOptimizer arguments. Every rank builds every other
rank's input from a seed, so the expected result is computed locally.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import hpcdl.horovod as horovod
import hpcdl.horovod.torch as hvd
from hpcdl.errors import HpcdlError, InvalidArgumentError, MismatchError

REDUCE_DTYPES = [torch.int32, torch.int64, torch.float16, torch.bfloat16, torch.float32,
                 torch.float64, torch.uint8, torch.int8, torch.int16]
MOVE_DTYPES = REDUCE_DTYPES + [torch.bool]


@pytest.fixture
def h(ctx):
    hvd.init()
    return ctx


def data(rank: int, shape: tuple[int, ...], dtype: torch.dtype, salt: int = 0) -> torch.Tensor:
    """Rank ``rank``'s input: small integers, exact in every dtype and in sums of 4."""
    g = torch.Generator().manual_seed(1000 * rank + salt)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    lo = 0 if dtype == torch.uint8 else -10
    return torch.randint(lo, 10, shape, generator=g).to(dtype)


def expected(op: int, inputs: list[torch.Tensor]) -> torch.Tensor:
    x = torch.stack([t.double() for t in inputs])
    if op == hvd.Sum:
        return x.sum(0)
    if op == hvd.Average:
        return x.sum(0) / len(inputs)
    if op == hvd.Min:
        return x.min(0).values
    if op == hvd.Max:
        return x.max(0).values
    return x.prod(0)


def test_init_and_topology(h):
    assert hvd.is_initialized()
    assert (hvd.rank(), hvd.size()) == (h.rank, h.size)
    assert (hvd.local_rank(), hvd.local_size()) == (h.local_rank, h.local_size)
    assert 0 <= hvd.cross_rank() < hvd.cross_size()
    assert hvd.cross_size() * hvd.local_size() == hvd.size()
    assert hvd.mpi_built() and hvd.mpi_enabled()
    assert not (hvd.gloo_built() or hvd.gloo_enabled() or hvd.nccl_built() or hvd.ddl_built()
                or hvd.ccl_built())
    assert hvd.cuda_built() == (torch.version.cuda is not None)
    assert isinstance(hvd.mpi_threads_supported(), bool)
    assert hvd.is_homogeneous()


@pytest.mark.parametrize("op", [hvd.Sum, hvd.Average, hvd.Min, hvd.Max, hvd.Product])
def test_allreduce_ops_dtypes_dims(h, op):
    n = h.size
    for dtype, dim in itertools.product(REDUCE_DTYPES, [1, 2, 3]):
        if op == hvd.Product and dtype in (torch.int8, torch.uint8, torch.float16,
                                           torch.bfloat16):
            continue  # 4 factors of up to 10 leave these dtypes' exact range
        shape = (5,) * dim
        mine = data(h.rank, shape, dtype)
        before = mine.clone()
        out = hvd.allreduce(mine, op=op, name=f"t{dim}")
        assert out.dtype == dtype and out.shape == mine.shape
        assert torch.equal(mine, before), "allreduce must not modify its input"
        ref = expected(op, [data(r, shape, dtype) for r in range(n)])
        if dtype.is_floating_point:
            tol = 0.0 if dtype in (torch.float32, torch.float64) else 0.05 * ref.abs().max()
            assert torch.allclose(out.double(), ref, atol=float(tol)), (dtype, op)
        else:
            if op == hvd.Average:  # Horovod scales integers and truncates toward zero
                ref = torch.trunc(ref)
            assert torch.equal(out, ref.to(torch.int64).to(dtype)), (dtype, op)


def test_average_is_default_and_average_flag(h):
    t = torch.full((4,), float(h.rank))
    mean = (h.size - 1) / 2
    assert torch.allclose(hvd.allreduce(t), torch.full((4,), mean))
    assert torch.allclose(hvd.allreduce(t, average=False), torch.full((4,), 2 * mean * h.size / 2))
    with pytest.raises(InvalidArgumentError, match="supersedes"):
        hvd.allreduce(t, average=True, op=hvd.Sum)


def test_allreduce_inplace_and_async(h):
    n = h.size
    tensors = [data(h.rank, (7, 3), torch.float32, salt=i) for i in range(4)]
    handles = [hvd.allreduce_async_(t, op=hvd.Sum, name=f"a{i}") for i, t in enumerate(tensors)]
    handles += [hvd.allreduce_async(data(h.rank, (6,), torch.float64, salt=9))]
    for hd in handles:
        assert hvd.poll(hd) in (True, False)
    results = [hvd.synchronize(hd) for hd in handles]
    for i, (t, res) in enumerate(zip(tensors, results[:4])):
        assert res is t
        ref = expected(hvd.Sum, [data(r, (7, 3), torch.float32, salt=i) for r in range(n)])
        assert torch.equal(t.double(), ref)
    ref = expected(hvd.Average, [data(r, (6,), torch.float64, salt=9) for r in range(n)])
    assert torch.allclose(results[4], ref)
    t = data(h.rank, (3,), torch.int32)
    assert hvd.allreduce_(t, op=hvd.Max) is t
    with pytest.raises(InvalidArgumentError, match="not a pending"):
        hvd.synchronize(handles[0])


def test_prescale_postscale(h):
    t = data(h.rank, (9,), torch.float64)
    ref = expected(hvd.Sum, [data(r, (9,), torch.float64) for r in range(h.size)])
    out = hvd.allreduce(t, op=hvd.Sum, prescale_factor=0.5, postscale_factor=3.0)
    assert torch.allclose(out, ref * 1.5)
    ti = data(h.rank, (9,), torch.int32)
    out_i = hvd.allreduce(ti, op=hvd.Sum, postscale_factor=2.0)
    refi = expected(hvd.Sum, [data(r, (9,), torch.int32) for r in range(h.size)]) * 2
    assert torch.equal(out_i, refi.to(torch.int32))


def test_grouped_allreduce(h):
    shapes = [(3,), (2, 4), (1, 2, 3)]
    mine = [data(h.rank, s, torch.float32, salt=i) for i, s in enumerate(shapes)]
    out = hvd.grouped_allreduce(mine, op=hvd.Sum)
    for i, (s, o) in enumerate(zip(shapes, out)):
        ref = expected(hvd.Sum, [data(r, s, torch.float32, salt=i) for r in range(h.size)])
        assert torch.equal(o.double(), ref)
    same = hvd.grouped_allreduce_(mine)
    assert all(a is b for a, b in zip(same, mine))
    hd = hvd.grouped_allreduce_async([torch.ones(2)])
    assert torch.equal(hvd.synchronize(hd)[0], torch.ones(2))


def test_allgather_variable_first_dim(h):
    for dtype, dim in itertools.product(MOVE_DTYPES, [1, 2, 3]):
        rows = [r % 3 + 1 for r in range(h.size)]
        shape = lambda r: (rows[r],) + (2,) * (dim - 1)  # noqa: E731
        out = hvd.allgather(data(h.rank, shape(h.rank), dtype))
        ref = torch.cat([data(r, shape(r), dtype) for r in range(h.size)])
        assert out.dtype == dtype and torch.equal(out, ref), dtype
    hd = hvd.allgather_async(torch.tensor([h.rank]))
    assert hvd.synchronize(hd).tolist() == list(range(h.size))


def test_broadcast_every_root(h):
    for root, dtype in itertools.product(range(h.size), MOVE_DTYPES):
        mine = data(h.rank, (3, 2), dtype)
        before = mine.clone()
        out = hvd.broadcast(mine, root_rank=root)
        assert torch.equal(out, data(root, (3, 2), dtype)) and torch.equal(mine, before)
        assert hvd.broadcast_(mine, root) is mine
        assert torch.equal(mine, data(root, (3, 2), dtype))
    with pytest.raises(InvalidArgumentError, match="root_rank"):
        hvd.broadcast(torch.ones(1), root_rank=h.size)
    with pytest.raises(InvalidArgumentError, match="root_rank=True"):  # not rank 1
        hvd.broadcast(torch.ones(1), root_rank=True)


def test_alltoall(h):
    n, r = h.size, h.rank
    for dtype, dim in itertools.product(MOVE_DTYPES, [1, 2, 3]):
        vals = torch.tensor([i for i in range(n) for _ in range(r + 1)])
        t = vals.reshape(-1, *([1] * (dim - 1))).expand(-1, *([2] * (dim - 1))).to(dtype)
        out, received = hvd.alltoall(t, torch.tensor([r + 1] * n, dtype=torch.int32))
        assert received.tolist() == [k + 1 for k in range(n)]
        assert out.shape[0] == n * (n + 1) // 2 and out.dtype == dtype
        assert torch.equal(out, torch.full_like(out, r))
    equal = hvd.alltoall(torch.arange(2 * n) + 100 * r)
    assert equal.tolist() == [100 * k + 2 * r + j for k in range(n) for j in range(2)]
    with pytest.raises(InvalidArgumentError, match="divisible"):
        hvd.alltoall(torch.ones(2 * n + 1)) if n > 1 else hvd.alltoall(torch.ones(()))
    with pytest.raises(InvalidArgumentError, match="splits"):
        hvd.alltoall(torch.ones(3), splits=torch.tensor([4] + [0] * (n - 1)))
    with pytest.raises(InvalidArgumentError, match="int32 or int64"):
        hvd.alltoall(torch.ones(n), splits=torch.ones(n))


@pytest.mark.parametrize("op", [hvd.Sum, hvd.Average])
def test_reducescatter_rows(h, op):
    n = h.size
    for dtype, rows in itertools.product([torch.int32, torch.float32, torch.float64],
                                         [4 * n, 4 * n + 3]):
        mine = data(h.rank, (rows, 2), dtype)
        out = hvd.reducescatter(mine, op=op)
        full = expected(op, [data(r, (rows, 2), dtype) for r in range(n)])
        if not dtype.is_floating_point:
            full = torch.trunc(full)
        base, extra = divmod(rows, n)
        start = h.rank * base + min(h.rank, extra)
        count = base + (h.rank < extra)
        assert out.shape == (count, 2)
        assert torch.allclose(out.double(), full[start:start + count]), (dtype, rows)
    with pytest.raises(InvalidArgumentError, match="Average or Sum"):
        hvd.reducescatter(torch.ones(n), op=hvd.Max)


@pytest.mark.mpi(min_size=2)
def test_mismatched_shapes_raise_on_every_rank_naming_ranks(h):
    shape = (3, 4) if h.rank == 1 else (2, 4)
    with pytest.raises(MismatchError) as info:
        hvd.allreduce(torch.ones(shape))
    assert "rank 1 has [3, 4]" in str(info.value) and "rank 0 has [2, 4]" in str(info.value)
    dtype = torch.float64 if h.rank == 1 else torch.float32
    with pytest.raises(MismatchError, match="rank 1 has float64"):
        hvd.allreduce(torch.ones(2, dtype=dtype))
    with pytest.raises(MismatchError, match="mismatched rest"):
        hvd.allgather(torch.ones(1, 2 + (h.rank == 1)))
    with pytest.raises(MismatchError, match="root_rank"):
        hvd.broadcast(torch.ones(2), root_rank=min(h.rank, 1))
    hvd.barrier()  # the failed calls left nothing queued: the ranks still agree


def _adasum_pair(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab, aa, bb = a @ b, a @ a, b @ b
    return (1 - ab / (2 * aa)) * a + (1 - ab / (2 * bb)) * b


def adasum_reference(xs: list[np.ndarray]) -> np.ndarray:
    """Extra ranks fold into rank r - p first, then a binary tree over the power of two."""
    p = 1 << (len(xs).bit_length() - 1)
    level = [xs[i] if i + p >= len(xs) else _adasum_pair(xs[i], xs[i + p]) for i in range(p)]
    while len(level) > 1:
        level = [_adasum_pair(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def test_adasum_matches_reference(h):
    for count in [1, 7, 64, 1001]:
        xs = [data(r, (count,), torch.float64, salt=count) + 0.25 for r in range(h.size)]
        out = hvd.allreduce(xs[h.rank], op=hvd.Adasum)
        ref = adasum_reference([x.numpy() for x in xs])
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-10)
    # Equal vectors average, orthogonal ones sum (Adasum's two defining cases).
    same = hvd.allreduce(torch.ones(4, dtype=torch.float32), op=hvd.Adasum)
    assert torch.allclose(same, torch.ones(4))
    if h.size in (2, 4):
        basis = torch.zeros(h.size, dtype=torch.float64)
        basis[h.rank] = 2.0
        assert torch.allclose(hvd.allreduce(basis, op=hvd.Adasum), torch.full((h.size,), 2.0,
                                                                              dtype=torch.float64))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def _batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(rank)
    return torch.randn(8, 6, generator=g), torch.randn(8, 2, generator=g)


@pytest.mark.parametrize("kwargs", [{}, {"compression": hvd.Compression.fp16},
                                    {"gradient_predivide_factor": 2.0},
                                    {"groups": 2}, {"op": hvd.Sum}])
def test_distributed_optimizer_matches_reference(h, kwargs):
    model, ref = _model(), _model()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   named_parameters=model.named_parameters(), **kwargs)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    x, y = _batch(h.rank)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    # Reference: the average (or sum) of every rank's gradient, computed here.
    grads = []
    for r in range(h.size):
        ref.zero_grad()
        xr, yr = _batch(r)
        torch.nn.functional.mse_loss(ref(xr), yr).backward()
        grads.append([p.grad.clone() for p in ref.parameters()])
    scale = 1.0 if kwargs.get("op") == hvd.Sum else 1.0 / h.size
    with torch.no_grad():
        for i, p in enumerate(ref.parameters()):
            p -= 0.1 * scale * sum(g[i] for g in grads)
    tol = 1e-3 if "compression" in kwargs else 1e-6
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=tol)


def test_distributed_optimizer_arguments(h):
    model = _model()
    with pytest.raises(InvalidArgumentError, match="op != Average"):
        hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), op=hvd.Sum,
                                 gradient_predivide_factor=2.0)
    with pytest.raises(InvalidArgumentError, match="must be > 0"):
        hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                 backward_passes_per_step=0)
    with pytest.raises(InvalidArgumentError, match="Adasum"):
        hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), op=hvd.Max)
    with pytest.warns(DeprecationWarning):
        opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                       num_groups=4)
    assert len(opt.buckets) >= 2
    opt.remove_hooks()


def test_adasum_optimizer_sgd(h):
    model = _model()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), op=hvd.Adasum)
    x, y = _batch(h.rank)
    torch.nn.functional.mse_loss(model(x), y).backward()
    mine = [p.grad.clone() for p in model.parameters()]
    opt.step()
    everyone = hvd.allgather_object([g.double().numpy() for g in mine])
    with torch.no_grad():
        start = _model()
        for p, p0, i in zip(model.parameters(), start.parameters(), itertools.count()):
            combined = adasum_reference([e[i].ravel() for e in everyone]).reshape(p.shape)
            assert torch.allclose(p.double(), p0.double() - 0.1 * torch.from_numpy(combined),
                                  atol=1e-6)


def test_broadcast_helpers_and_objects(h):
    model = _model()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(h.rank)
    hvd.broadcast_parameters(model.state_dict(), root_rank=h.size - 1)
    assert all(torch.all(p == h.size - 1) for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=0.01 * (h.rank + 1))
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    assert opt.param_groups[0]["lr"] == 0.01
    obj = hvd.broadcast_object({"epoch": h.rank, "name": "x" * h.rank}, root_rank=0)
    assert obj == {"epoch": 0, "name": ""}
    assert hvd.allgather_object(("r", h.rank)) == [("r", r) for r in range(h.size)]
    assert 0 <= hvd.join() < h.size
    hvd.barrier()


def test_process_sets(h):
    if h.size == 1:  # the only set of one rank is the global set, as in Horovod
        with pytest.raises(InvalidArgumentError, match="already exists"):
            hvd.add_process_set([0])
        return
    evens = hvd.add_process_set(list(range(0, h.size, 2)))
    try:
        assert evens.size() == (h.size + 1) // 2
        if h.rank % 2 == 0:
            assert evens.included() and evens.rank() == h.rank // 2
            out = hvd.allreduce(torch.tensor([float(h.rank)]), op=hvd.Sum, process_set=evens)
            assert out.item() == sum(range(0, h.size, 2))
            assert hvd.broadcast_object(h.rank, root_rank=0, process_set=evens) == 0
            hvd.barrier(process_set=evens)
        else:
            assert not evens.included() and evens.rank() == -1
            with pytest.raises(InvalidArgumentError, match="not a member"):
                hvd.allreduce(torch.ones(1), process_set=evens)
        with pytest.raises(InvalidArgumentError, match="already exists"):
            hvd.add_process_set(list(range(0, h.size, 2)))
    finally:
        assert hvd.remove_process_set(evens)
    assert not hvd.remove_process_set(hvd.global_process_set)


def test_not_available_names_raise_clearly(h):
    with pytest.raises(HpcdlError, match="elastic training"):
        hvd.elastic.run(lambda state: None)
    with pytest.raises(HpcdlError, match="hpcdl launch -n 2"):
        horovod.run(test_init_and_topology, np=2)
    with pytest.raises(HpcdlError, match="timeline"):
        hvd.start_timeline("/tmp/timeline.json")
    with pytest.raises(HpcdlError, match="not supported"):
        hvd.allreduce(torch.ones(2, dtype=torch.complex64))
