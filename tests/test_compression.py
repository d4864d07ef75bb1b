"""Compressors: the Horovod contract, FP16 with agreed per-chunk scales, error feedback.

Run at every size: each test compresses, allreduces and decompresses across
all ranks of the job and compares with a float64 reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch  # a dependency of the test extras: a missing one must fail, not skip

import hpcdl
from hpcdl.compression import Compressor, FP16Compressor, NoneCompressor


def _exact_sum(comm, x: np.ndarray) -> np.ndarray:
    mine = np.ascontiguousarray(x, np.float64).reshape(-1)
    every = np.empty(comm.size * mine.size, np.float64)
    comm.allgather(mine, every)
    return every.reshape(comm.size, -1).sum(0).reshape(x.shape)


def _bound(comm, exact_inputs_max: np.ndarray, chunk: int, n: int) -> np.ndarray:
    """Per element: world**2 * (chunk max over ranks) * 2**-10 (derivation in docs/gpu.md)."""
    return np.repeat(exact_inputs_max, chunk)[:n] * comm.size ** 2 * 2.0 ** -10


def _global_chunk_max(comm, x: np.ndarray, chunk: int) -> np.ndarray:
    flat = np.abs(np.ravel(x).astype(np.float64))
    rows = np.pad(flat, (0, -flat.size % chunk)).reshape(-1, chunk).max(1)
    comm.allreduce(rows, hpcdl.ReduceOp.MAX)
    return rows


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_fp16_allreduce_matches_float64_reference(ctx, rng, kind, dtype):
    if kind == "numpy" and dtype == "bfloat16":
        pytest.skip("bfloat16 NumPy arrays are covered through torch")
    chunk = 64
    shape = (37, 29)  # odd sizes: the last chunk is partial
    x64 = rng.standard_normal(shape) * 10.0 ** rng.integers(-8, 8, size=(37, 1))
    if dtype == "float16":  # the *sum* comes back as float16 too: keep it finite
        x64 = np.clip(x64, -6e4 / ctx.size, 6e4 / ctx.size)
    comp = FP16Compressor(chunk_size=chunk, comm=ctx.comm)
    if kind == "numpy":
        x = x64.astype(dtype)
        xs = x.astype(np.float64)
    else:
        x = torch.from_numpy(x64).to(getattr(torch, dtype))
        xs = x.to(torch.float64).numpy()
    payload, cctx = comp.compress(x)
    hpcdl.allreduce(payload, op="sum", comm=ctx.comm)
    total = comp.decompress(payload, cctx)
    exact = _exact_sum(ctx.comm, xs)
    gmax = _global_chunk_max(ctx.comm, xs, chunk)
    got = total.to(torch.float64).numpy() if kind == "torch" else total.astype(np.float64)
    assert tuple(total.shape) == shape
    assert str(total.dtype).endswith(dtype)
    # rounding the sum into the output dtype (float16 subnormals: absolute 2**-25)
    out_round = np.abs(exact) * (2.0 ** -7 if dtype == "bfloat16" else 2.0 ** -10) + \
        (2.0 ** -24 if dtype == "float16" else 0.0)
    err = np.abs(got - exact).reshape(-1)
    assert (err <= _bound(ctx.comm, gmax, chunk, err.size) + out_round.reshape(-1)).all()


def test_torch_path_equals_numpy_reference_bit_for_bit(ctx, rng):
    x = (rng.standard_normal(5000) * 1e3).astype(np.float32)
    a = FP16Compressor(chunk_size=128, comm=ctx.comm, error_feedback=True)
    b = FP16Compressor(chunk_size=128, comm=ctx.comm, error_feedback=True)
    outs = []
    for _ in range(3):
        pa, ca = a.compress(x, name="w")
        pb, cb = b.compress(torch.from_numpy(x), name="w")
        outs.append((pa.copy(), pb.numpy().copy(), ca.scales.copy(), cb.scales.numpy().copy()))
    for pa, pb, sa, sb in outs:
        np.testing.assert_array_equal(pa.view(np.uint16), pb.view(np.uint16))
        np.testing.assert_array_equal(sa, sb)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("n", [0, 5, 64, 3 * 64, 3 * 64 + 7])
def test_torch_chunk_views_equal_numpy_reference(ctx, rng, dtype, n):
    """The torch path cuts chunks as a 2-D view plus a tail and broadcasts the scales;
    payload, scales, residual and decompressed sum equal the NumPy reference bit for
    bit for every size (none, under one chunk, whole chunks, a partial last chunk),
    every input dtype and non-finite values (their chunk keeps scale 1)."""
    chunk = 64
    x64 = rng.standard_normal(n) * 10.0 ** rng.integers(-6, 6, size=n)
    if n > 64:
        x64[3], x64[70] = np.nan, -np.inf  # chunk 0 and chunk 1 are non-finite
    t = torch.from_numpy(x64).to(getattr(torch, dtype))
    ref_in = t.to(torch.float64).numpy()  # the same values the torch path starts from
    a = FP16Compressor(chunk_size=chunk, comm=ctx.comm, error_feedback=True)
    b = FP16Compressor(chunk_size=chunk, comm=ctx.comm, error_feedback=True)
    for _ in range(2):  # the second step adds the residual of the first
        pa, ca = a.compress(ref_in.astype(np.float32), name="w")
        pb, cb = b.compress(t, name="w")
        np.testing.assert_array_equal(pa.view(np.uint16), pb.numpy().view(np.uint16))
        np.testing.assert_array_equal(ca.scales, cb.scales.numpy())
        np.testing.assert_array_equal(a.state_dict()["residuals"]["w"]["value"].numpy(),
                                      b.state_dict()["residuals"]["w"]["value"].numpy())
        da = a.decompress(pa, ca)
        db = b.decompress(pb, cb)
        assert db.dtype == t.dtype and tuple(db.shape) == (n,)
        np.testing.assert_array_equal(da.astype(np.float32),
                                      db.to(torch.float32).numpy())
    if n > 64:
        assert np.isnan(db[3].item()) and db[70].item() == -np.inf
        assert cb.scales[0].item() == 1.0 and cb.scales[1].item() == 1.0


def test_plain_half_overflows_and_underflows_where_fp16_compressor_does_not(ctx):
    chunk = 8
    big = np.array([1e5, -7e4, 65520.0, 3e6, 1e5, 2e5, -9e4, 7e4], np.float32)
    tiny = np.array([1e-9, -3e-8, 5e-10, 2e-9, -1e-9, 4e-8, 1e-8, -7e-9], np.float32)
    x = np.concatenate([big, tiny])
    with np.errstate(over="ignore"):
        plain = x.astype(np.float16)
    assert np.isinf(plain[:chunk]).sum() >= 7      # above 65504 (65520 rounds up) -> inf
    assert (plain[chunk:] == 0).sum() >= 5         # below ~3e-8 -> flushed to zero
    assert np.abs(plain[chunk:].astype(np.float64) - tiny).max() / np.abs(tiny).max() > 0.1
    comp = FP16Compressor(chunk_size=chunk, comm=ctx.comm)
    payload, cctx = comp.compress(x)
    hpcdl.allreduce(payload, op="sum", comm=ctx.comm)
    mean = comp.decompress(payload, cctx) / ctx.size
    assert np.isfinite(payload).all() and (payload != 0).all()
    np.testing.assert_allclose(mean, x, rtol=2.0 ** -9)


def test_non_finite_values_come_back_non_finite(ctx):
    x = np.array([1.0, np.inf, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 1.0], np.float32)
    comp = FP16Compressor(chunk_size=8, comm=ctx.comm)
    payload, cctx = comp.compress(x)
    hpcdl.allreduce(payload, op="sum", comm=ctx.comm)
    out = comp.decompress(payload, cctx)
    assert np.isinf(out[1]) and np.isfinite(out[[0, 2, 8]]).all()
    np.testing.assert_allclose(out[8], ctx.size, rtol=1e-3)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_error_feedback_keeps_accumulated_error_bounded(ctx, kind):
    steps, chunk = 40, 16
    g = (np.arange(1, 49, dtype=np.float64) / 3.0 + 1e3 * (np.arange(48) % 16 == 0)).astype(np.float32)
    errors = {}
    for ef in (False, True):
        comp = FP16Compressor(chunk_size=chunk, error_feedback=ef, comm=ctx.comm)
        acc = np.zeros(g.size, np.float64)
        for _ in range(steps):
            x = g if kind == "numpy" else torch.from_numpy(g.copy())
            # Error feedback repairs this rank's quantization loss, not the rounding
            # of the fp16 sum, so this measures the local round trip (compress
            # is still collective: the scales are agreed across ranks).
            payload, cctx = comp.compress(x, name="layer1")
            out = comp.decompress(payload, cctx)
            acc += out if kind == "numpy" else out.numpy()
        errors[ef] = np.abs(acc - steps * g.astype(np.float64)).max()
    assert errors[True] < errors[False] / 5, errors


def test_none_compressor_and_protocol(ctx):
    x = np.arange(5.0)
    payload, cctx = NoneCompressor().compress(x)
    assert payload is x and cctx is None and NoneCompressor().decompress(payload, cctx) is x
    assert isinstance(NoneCompressor(), Compressor) and isinstance(FP16Compressor(), Compressor)
    # the protocol says which compressors communicate inside compress()
    assert FP16Compressor.collective and not NoneCompressor.collective


def test_empty_tensor_and_bad_arguments(ctx):
    from hpcdl.errors import DtypeError, InvalidArgumentError

    comp = FP16Compressor(comm=ctx.comm)
    payload, cctx = comp.compress(np.zeros((0, 3), np.float32))
    assert payload.shape == (0, 3) and comp.decompress(payload, cctx).shape == (0, 3)
    with pytest.raises(DtypeError, match="floating"):
        comp.compress(np.arange(4, dtype=np.int32))
    with pytest.raises(InvalidArgumentError, match="multiple of 8"):
        FP16Compressor(chunk_size=10)
