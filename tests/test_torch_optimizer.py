"""DistributedOptimizer: N ranks train the same model as one process on the full batch.

Every rank computes the single-process reference itself (the whole global
batch, plain torch optimizer), so the comparison needs no communication and
holds at any rank count, 1 included. Tolerances: 1e-5 (float32, only the
summation order differs) and 2e-3 with fp16 compression (each reduced
gradient is rounded to 11 significant bits).
"""

from __future__ import annotations

import copy

import pytest
import torch

import hpcdl
from hpcdl.errors import InvalidArgumentError, MismatchError
from hpcdl.torch import DistributedOptimizer, GradScaler

torch.set_num_threads(1)  # several ranks share 2 cores: one thread each

GLOBAL_BATCH = 24  # divisible by 1, 2, 3, 4 ranks, and by 2 micro-batches at each
STEPS = 3
TOL = 1e-5
FP16_TOL = 2e-3


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc1 = torch.nn.Linear(4 * 6 * 6, 16)
        self.fc2 = torch.nn.Linear(16, 3)
        self.unused = torch.nn.Linear(5, 5)      # never in the graph
        self.rank0_only = torch.nn.Linear(3, 3)  # in the graph on rank 0 only

    def forward(self, x: torch.Tensor, use_extra: bool = False) -> torch.Tensor:
        h = torch.relu(self.conv(x)).flatten(1)
        out = self.fc2(torch.relu(self.fc1(h)))
        return self.rank0_only(out) if use_extra else out


def data(seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(GLOBAL_BATCH, 1, 6, 6, generator=g), torch.randint(0, 3, (GLOBAL_BATCH,),
                                                                          generator=g)


def make_model() -> Net:
    torch.manual_seed(0)
    return Net()


def loss_of(model: Net, x: torch.Tensor, y: torch.Tensor, **kw) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(model(x, **kw), y)


def shard(t: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    n = t.shape[0] // size
    return t[rank * n:(rank + 1) * n]


def max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((p.detach() - q.detach()).abs().max()) for p, q in zip(a.parameters(), b.parameters()))


def reference(passes: int = 1, opt_name: str = "sgd") -> Net:
    """The single-process run: the full global batch, ``passes`` micro-batches per step."""
    model = make_model()
    opt = _opt(opt_name, model)
    x, y = data()
    for _ in range(STEPS):
        opt.zero_grad()
        for xm, ym in zip(x.chunk(passes), y.chunk(passes)):
            (loss_of(model, xm, ym) / passes).backward()
        opt.step()
    return model


def _opt(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=0.01)
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def distributed(ctx, passes: int = 1, opt_name: str = "sgd", **kw) -> Net:
    model = make_model()
    opt = DistributedOptimizer(_opt(opt_name, model), named_parameters=model.named_parameters(),
                               backward_passes_per_step=passes, **kw)
    x, y = data()
    xs, ys = shard(x, ctx.rank, ctx.size), shard(y, ctx.rank, ctx.size)
    for _ in range(STEPS):
        opt.zero_grad()
        for xm, ym in zip(xs.chunk(passes), ys.chunk(passes)):
            (loss_of(model, xm, ym) / passes).backward()
        opt.step()
    return model


class HalfCompressor:
    """A minimal compressor of the Horovod contract (payload summed, decompress = sum)."""

    def compress(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.dtype]:
        return t.to(torch.float16), t.dtype

    def decompress(self, payload: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return payload.to(dtype)


@pytest.mark.parametrize("fusion_mb", [25.0, 0.001, 0.0], ids=["one-bucket", "tiny", "per-param"])
def test_matches_single_process(ctx, fusion_mb):
    got = distributed(ctx, fusion_threshold_mb=fusion_mb)
    assert max_diff(got, reference()) < TOL


def test_bucket_layout(ctx):
    model = make_model()
    tiny = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                named_parameters=model.named_parameters(),
                                fusion_threshold_mb=0.001)
    one = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                               named_parameters=model.named_parameters())
    tiny.remove_hooks()
    one.remove_hooks()
    names = [n for b in tiny.buckets for n in b.names]
    assert names == [n for n, _ in model.named_parameters()][::-1]
    assert len(one.buckets) == 1 and len(tiny.buckets) >= 3
    assert all(b.nbytes <= 0.001 * 2**20 or len(b.names) == 1 for b in tiny.buckets)


def test_buckets_follow_the_order_gradients_arrive(ctx):
    """In a 12-layer Sequential the backward pass produces layer 11's gradients first:
    its bucket must come first (a name sort would put '11.*' and '10.*' after '2.*')."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(12)])
    opt = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                               named_parameters=model.named_parameters(),
                               fusion_threshold_mb=0.0)
    arrived: list[str] = []
    names = {id(p): n for n, p in model.named_parameters()}
    hooks = [p.register_post_accumulate_grad_hook(lambda q: arrived.append(names[id(q)]))
             for p in model.parameters()]
    model(torch.randn(3, 4)).sum().backward()
    for h in hooks:
        h.remove()
    opt.synchronize()
    opt.remove_hooks()
    layers = [b.names[0].split(".")[0] for b in opt.buckets]
    assert layers[:4] == ["11", "11", "10", "10"], layers
    # layer by layer as autograd delivered them (weight/bias order within a layer is autograd's)
    assert layers == [n.split(".")[0] for n in arrived]


def test_gradient_accumulation(ctx):
    got = distributed(ctx, passes=2, fusion_threshold_mb=0.001)
    assert max_diff(got, reference(passes=2)) < TOL


def test_adam_state_passthrough(ctx):
    got = distributed(ctx, opt_name="adam")
    assert max_diff(got, reference(opt_name="adam")) < 1e-4


def test_fp16_compression_contract(ctx):
    got = distributed(ctx, compression=HalfCompressor(), fusion_threshold_mb=0.001)
    assert max_diff(got, reference()) < FP16_TOL


def test_fp16_compressor_of_hpcdl(ctx):
    from hpcdl.compression import FP16Compressor

    got = distributed(ctx, compression=FP16Compressor())
    assert max_diff(got, reference()) < FP16_TOL


@pytest.mark.fake_ranks
def test_fp16_compression_never_blocks_the_backward_hooks(monkeypatch):
    """Defect 4: the scale agreement (an allreduce of max) must not drain the async
    queue inside a gradient hook; it runs with the bucket's own queued operation.
    Two in-process ranks."""
    import threading

    from hpcdl.comm import run_ranks
    from hpcdl.compression import FP16Compressor

    # A blocking collective in the hook drains the queue whenever it is non-empty
    # (timing-dependent); where the scale allreduce runs is not: count it by thread.
    blocked: list[str] = []
    real_max = FP16Compressor._allreduce_max

    def on_which_thread(self, maxabs):
        blocked.append(threading.current_thread().name)
        return real_max(self, maxabs)

    monkeypatch.setattr(FP16Compressor, "_allreduce_max", on_which_thread)

    def body(comm):
        torch.manual_seed(0)  # every parameter gets a gradient: buckets launch in the hooks
        model = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(4)])
        opt = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   named_parameters=model.named_parameters(),
                                   compression=FP16Compressor(comm=comm),
                                   fusion_threshold_mb=0.0, comm=comm)
        before = len(blocked)
        model(torch.randn(5, 8)).square().sum().backward()
        during = [t for t in blocked[before:] if t == threading.current_thread().name]
        opt.step()
        opt.remove_hooks()
        comm.executor.close()
        return len(during)

    assert run_ranks(2, body, timeout=60) == [0, 0], blocked


def test_fp16_compressor_must_share_the_optimizer_comm(ctx):
    from hpcdl.compression import FP16Compressor
    from hpcdl.comm import run_ranks

    other = run_ranks(1, lambda c: c)[0]
    model = make_model()
    with pytest.raises(InvalidArgumentError, match="comm"):
        DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                             compression=FP16Compressor(comm=other))


def test_unused_and_rank_dependent_parameters(ctx):
    """``unused`` never gets a gradient; ``rank0_only`` only on rank 0: both finish, averaged."""
    model = make_model()
    opt = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                               named_parameters=model.named_parameters(),
                               fusion_threshold_mb=0.0)
    x, y = data()
    xs, ys = shard(x, ctx.rank, ctx.size), shard(y, ctx.rank, ctx.size)
    loss_of(model, xs, ys, use_extra=ctx.rank == 0).backward()
    local = model.rank0_only.weight.grad.clone() if ctx.rank == 0 else None
    opt.synchronize()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    from_root = hpcdl.torch.broadcast_object(local, root_rank=0)
    opt.step()
    assert torch.count_nonzero(grads["unused.weight"]) == 0
    assert torch.allclose(grads["rank0_only.weight"], from_root / ctx.size, atol=1e-7)


def test_synchronize_then_clip(ctx):
    """Clipping between synchronize() and step() clips the averaged gradient."""
    model, ref = make_model(), make_model()
    opt = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                               named_parameters=model.named_parameters())
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    x, y = data()
    loss_of(model, shard(x, ctx.rank, ctx.size), shard(y, ctx.rank, ctx.size)).backward()
    opt.synchronize()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
    with opt.skip_synchronize():
        opt.step()
    loss_of(ref, x, y).backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
    ref_opt.step()
    assert max_diff(model, ref) < TOL


def test_too_many_backward_passes_raises(ctx):
    model = make_model()
    opt = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                               named_parameters=model.named_parameters())
    x, y = data()
    loss_of(model, x, y).backward()
    with pytest.raises(InvalidArgumentError, match="backward_passes_per_step"):
        loss_of(model, x, y).backward()
    opt.synchronize()  # the first pass's reduction still completes on every rank


def test_layout_mismatch_names_the_rank(ctx):
    model = make_model() if ctx.rank != ctx.size - 1 else torch.nn.Linear(2, 2)
    err = None
    try:
        DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                             named_parameters=model.named_parameters())
    except MismatchError as exc:
        err = exc
    if ctx.size == 1:
        assert err is None
    else:
        assert err is not None and f"rank {ctx.size - 1} differs from rank 0" in str(err)


def test_named_parameters_must_cover_optimizer(ctx):
    model = make_model()
    with pytest.raises(InvalidArgumentError, match="not in named_parameters"):
        DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                             named_parameters=list(model.named_parameters())[:2])


def test_bfloat16_autocast_trains(ctx):
    """torch.autocast on the CPU (bfloat16) with the optimizer: same model everywhere."""
    model = make_model()
    opt = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                               named_parameters=model.named_parameters())
    x, y = data()
    xs, ys = shard(x, ctx.rank, ctx.size), shard(y, ctx.rank, ctx.size)
    for _ in range(2):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_of(model, xs, ys)
        loss.backward()
        opt.step()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    everyone = hpcdl.allgather(flat)
    assert torch.equal(everyone, flat.expand(ctx.size, -1))
    assert max_diff(model, reference()) < 5e-2  # bfloat16 forward: loose, but same direction


def _amp_step(ctx, inject_after_sync: bool) -> tuple[bool, float, float]:
    """One scaled step where only the last rank sees an inf gradient.

    ``inject_after_sync=False``: the inf is in the local gradient before the
    reduction (a real overflow in one rank's backward). ``True``: it appears
    after the reduction, so only the cross-rank agreement of the flag can make
    the other ranks skip (torch's own GradScaler would step on them).
    Returns (parameters unchanged, scale before, scale after).
    """
    model = make_model()
    before = copy.deepcopy(model)
    opt = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                               named_parameters=model.named_parameters())
    scaler = GradScaler("cpu", init_scale=1024.0)
    x, y = data()
    loss = loss_of(model, shard(x, ctx.rank, ctx.size), shard(y, ctx.rank, ctx.size))
    scaler.scale(loss).backward()
    bad = ctx.rank == ctx.size - 1
    if bad and not inject_after_sync:
        model.fc1.weight.grad[0, 0] = float("inf")
    opt.synchronize()
    if bad and inject_after_sync:
        model.fc2.bias.grad[0] = float("inf")
    scale_before = scaler.get_scale()
    scaler.step(opt)
    scaler.update()
    return max_diff(model, before) == 0.0, scale_before, scaler.get_scale()


@pytest.mark.parametrize("after_sync", [False, True], ids=["local-overflow", "flag-only"])
def test_amp_overflow_on_one_rank_skips_everywhere(ctx, after_sync):
    unchanged, s0, s1 = _amp_step(ctx, after_sync)
    views = ctx.comm.allgather_object((unchanged, s1))
    assert all(v == (True, s0 * 0.5) for v in views), views


def test_amp_finite_step_is_taken(ctx):
    model = make_model()
    before = copy.deepcopy(model)
    opt = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                               named_parameters=model.named_parameters())
    scaler = GradScaler("cpu", init_scale=1024.0)
    x, y = data()
    scaler.scale(loss_of(model, shard(x, ctx.rank, ctx.size),
                         shard(y, ctx.rank, ctx.size))).backward()
    scaler.step(opt)
    scaler.update()
    ref = make_model()
    loss_of(ref, x, y).backward()
    torch.optim.SGD(ref.parameters(), lr=0.1).step()
    assert max_diff(model, before) > 0 and max_diff(model, ref) < TOL
    assert scaler.get_scale() == 1024.0


def test_rejects_bad_arguments(ctx):
    model = make_model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    for kw, msg in [({"backward_passes_per_step": 0}, "backward_passes_per_step"),
                    ({"op": "max"}, "'avg' or 'sum'"),
                    ({"compression": object()}, "compress/decompress"),
                    ({"fusion_threshold_mb": -1}, "fusion_threshold_mb")]:
        with pytest.raises(InvalidArgumentError, match=msg):
            DistributedOptimizer(sgd, **kw)
    wrapped = DistributedOptimizer(sgd)
    with pytest.raises(InvalidArgumentError, match="already a DistributedOptimizer"):
        DistributedOptimizer(wrapped)
    with pytest.raises(InvalidArgumentError, match=r"step\(closure\) is not supported"):
        wrapped.step(lambda: 0.0)
    wrapped.remove_hooks()


def test_passthrough(ctx):
    model = make_model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt = DistributedOptimizer(sgd)  # names from the optimizer's parameter order
    assert opt.param_groups is sgd.param_groups and opt.state is sgd.state
    assert sum(b.numel for b in opt.buckets) == sum(p.numel() for p in model.parameters())
    x, y = data()
    loss_of(model, shard(x, ctx.rank, ctx.size), shard(y, ctx.rank, ctx.size)).backward()
    opt.step()
    saved = opt.state_dict()
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    opt.param_groups[0]["lr"] = 0.5
    opt.load_state_dict(saved)
    assert sgd.param_groups[0]["lr"] == 0.1 and len(sgd.state) == len(list(model.parameters()))


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_bucket_pack_unpack_round_trip(scale):
    """pack/unpack with multi-tensor ops: small tensors through _foreach_*, a large one
    (over _FOREACH_MAX_NUMEL elements) through its own mul; missing gradients pack as
    zeros and come back as zeros times the scale."""
    from hpcdl.torch.buckets import _FOREACH_MAX_NUMEL, build_buckets, pack, unpack

    g = torch.Generator().manual_seed(5)
    shapes = [(3,), (_FOREACH_MAX_NUMEL + 7,), (4, 5), (1,), (2, 3, 2)]
    params = [torch.zeros(s, requires_grad=True) for s in shapes]
    buckets = build_buckets([(f"p{i}", p) for i, p in enumerate(params)], 1 << 30)
    assert len(buckets) == 1
    b = buckets[0]
    b.allocate()
    for i, p in enumerate(params):
        p.grad = None if i == 3 else torch.randn(p.shape, generator=g)
    sent = {id(p): (torch.zeros(p.shape) if p.grad is None else p.grad.clone()) for p in params}
    pack(b)
    for o, p in zip(b.offsets, b.params):
        assert torch.equal(b.flat[o:o + p.numel()].view(p.shape), sent[id(p)])
    reduced = b.flat * 3  # what a 3-rank sum of identical gradients would give
    unpack(b, reduced, scale)
    for p in params:
        assert p.grad is not None
        torch.testing.assert_close(p.grad, sent[id(p)] * 3 * scale, rtol=0, atol=0)


class NamingCompressor:
    """The full protocol (hpcdl.compression.Compressor): records the names and the
    communicator the optimizer hands it."""

    collective = False

    def __init__(self) -> None:
        self.names: list[str | None] = []
        self.bound = None

    def compress(self, t: torch.Tensor, *, name: str | None = None):
        self.names.append(name)
        return t.to(torch.float16), t.dtype

    def decompress(self, payload: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return payload.to(dtype)

    def bind(self, comm) -> None:
        self.bound = comm


def test_compressor_protocol_gets_bucket_names_and_the_comm(ctx):
    """A protocol compressor is bound to the optimizer's communicator and gets every
    bucket's name; its training matches the Horovod-style one (same cast)."""
    from hpcdl.compression import Compressor, PlainCompressor, as_compressor

    comp = NamingCompressor()
    assert isinstance(comp, Compressor) and as_compressor(comp) is comp
    assert isinstance(as_compressor(HalfCompressor()), PlainCompressor)
    got = distributed(ctx, compression=comp, fusion_threshold_mb=0.001)
    assert comp.bound is ctx.comm
    assert comp.names and all(n is not None and n.startswith("hpcdl.bucket") for n in comp.names)
    assert max_diff(got, reference()) < FP16_TOL


def test_compression_without_the_protocol_names_the_rank(ctx):
    model = make_model()
    with pytest.raises(InvalidArgumentError, match=rf"rank {ctx.rank}\b.*compression=.*neither"):
        DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                             named_parameters=model.named_parameters(), compression=object())
