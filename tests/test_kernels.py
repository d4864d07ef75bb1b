"""The kernels: NumPy references checked on the CPU, CUDA sources compiled, kernels vs references on a GPU.

The GPU tests (marked ``gpu``) compare every kernel with its reference bit for
bit on random non-zero data, every dtype, odd sizes and layouts of 1 to 300
tensors, into outputs poisoned with NaN first.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from hpcdl.kernels import instantiation_source
from hpcdl.kernels import reference as ref
from hpcdl.kernels.layout import FusionLayout, make_layout
from hpcdl.ops import ReduceOp, bfloat16

KDTYPES = [np.dtype(np.float32), np.dtype(np.float16), bfloat16]


def _random(rng, n, dtype, scale=1.0):
    """Random values, none zero (a zero would hide an unwritten element)."""
    x = rng.standard_normal(n) * scale
    x = np.where(np.abs(x) < 1e-3, 1.0, x)
    return x.astype(dtype)


def _sizes(rng, count):
    return [int(s) for s in rng.choice([1, 3, 7, 8, 31, 1000, 4097, 8193, 20011], size=count)]


# -- layout and references (CPU) -----------------------------------------------
def test_layout_chunk_table_covers_every_element_once():
    lay = make_layout([5, 0, 17, 16], [np.float32] * 4, chunk_elems=8)
    assert lay.offsets == (0, 5, 5, 22) and lay.total == 38
    covered = np.zeros(lay.total, int)
    for t, c in lay.chunk_table:
        start = lay.offsets[t] + c * 8
        covered[start:min(start + 8, lay.offsets[t] + lay.numels[t])] += 1
    assert (covered == 1).all()
    assert list(lay.chunk_starts) == [0, 1, 1, 4]


def test_layout_rejects_bad_arguments():
    from hpcdl.errors import DtypeError, InvalidArgumentError

    with pytest.raises(DtypeError, match="float64"):
        make_layout([4], [np.float64])
    with pytest.raises(InvalidArgumentError, match="multiple of 8"):
        make_layout([4], [np.float32], chunk_elems=12)


@pytest.mark.parametrize("out_dtype", KDTYPES, ids=lambda d: d.name)
def test_reference_pack_is_concatenate_and_unpack_inverts_it(out_dtype):
    rng = np.random.default_rng(1)
    srcs = [_random(rng, n, KDTYPES[i % 3]) for i, n in enumerate(_sizes(rng, 12))]
    lay = FusionLayout(tuple(s.size for s in srcs), tuple(s.dtype for s in srcs), 64)
    buf = ref.pack(srcs, lay, out_dtype)
    expect = np.concatenate([s.astype(np.float32).astype(out_dtype) for s in srcs])
    np.testing.assert_array_equal(buf.view(np.uint8), expect.view(np.uint8))
    scaled = ref.pack(srcs, lay, out_dtype, scale=0.25, mode=1)
    np.testing.assert_array_equal(scaled.astype(np.float64), (expect.astype(np.float64) * 0.25))
    back = [np.full_like(s, np.nan) for s in srcs]
    ref.unpack(ref.pack(srcs, lay, np.float32), back, lay)
    for s, b in zip(srcs, back):
        np.testing.assert_array_equal(s, b)
    acc = [s.copy() for s in srcs]
    ref.unpack(ref.pack(srcs, lay, np.float32), acc, lay, scale=1.0, mode=2)
    for s, a in zip(srcs, acc):
        np.testing.assert_array_equal(a.astype(np.float64), (2 * s.astype(np.float64)).astype(s.dtype).astype(np.float64))


def test_reference_chunk_absmax_and_scales():
    rng = np.random.default_rng(2)
    x = _random(rng, 1000, np.float32, 100.0)
    x[500] = np.nan
    lay = FusionLayout((1000,), (x.dtype,), 64)
    m = ref.chunk_absmax([x], lay)
    assert m.size == 16 and np.isinf(m[500 // 64])
    rows = np.abs(np.pad(x, (0, 24))).reshape(16, 64)
    keep = np.arange(16) != 500 // 64
    np.testing.assert_array_equal(m[keep], rows.max(1)[keep])
    for world in (1, 3, 4, 64):
        s = ref.fp16_scales(m, world)
        finite = np.isfinite(m)
        k = np.log2(s[finite])
        assert (k == np.round(k)).all()  # powers of two: scaling is exact
        scaled = m[finite].astype(np.float64) * world * s[finite]
        assert (scaled <= 2.0**15).all() and (scaled > 2.0**14).all()
        assert s[~finite].tolist() == [1.0]
    assert ref.fp16_scales(np.array([0.0, 1e-44, 3e38], np.float32), 2).tolist() == \
        [1.0, 2.0**126, 2.0**-114]


def test_reference_quantize_roundtrip_and_error_feedback():
    rng = np.random.default_rng(3)
    srcs = [_random(rng, n, np.float32, 1e4) for n in (100, 3, 777)]
    lay = FusionLayout(tuple(s.size for s in srcs), tuple(s.dtype for s in srcs), 32)
    m = ref.chunk_absmax(srcs, lay)
    residual = np.zeros(lay.total, np.float32)
    q, s = ref.quantize_fp16(srcs, lay, m, 2, residual)
    assert q.dtype == np.float16 and np.isfinite(q).all()
    assert np.abs(q.astype(np.float64)).max() <= 2.0**14
    outs = [np.full_like(x, np.nan) for x in srcs]
    ref.dequantize_fp16(q, s, outs, lay)
    for x, o, off in zip(srcs, outs, lay.offsets):
        np.testing.assert_allclose(o, x, rtol=2.0**-11, atol=0)
        # the residual is exactly what the round trip lost
        np.testing.assert_array_equal(residual[off:off + x.size], x - o)


@pytest.mark.parametrize("dtype", KDTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("op", [ReduceOp.SUM, ReduceOp.PROD, ReduceOp.MIN, ReduceOp.MAX])
def test_reference_reduce_is_float32_math_rounded_once(dtype, op):
    rng = np.random.default_rng(4)
    a, b = _random(rng, 1001, dtype), _random(rng, 1001, dtype)
    f = {ReduceOp.SUM: np.add, ReduceOp.PROD: np.multiply, ReduceOp.MIN: np.minimum,
         ReduceOp.MAX: np.maximum}[op]
    expect = f(a.astype(np.float32), b.astype(np.float32)).astype(dtype)
    ref.reduce(a, b, op)
    np.testing.assert_array_equal(a.view(np.uint8), expect.view(np.uint8))


# -- the CUDA sources compile --------------------------------------------------
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_every_kernel_instance_compiles_with_nvcc(tmp_path):
    from hpcdl.kernels import KERNEL_DIR

    tu = tmp_path / "all_kernels.cu"
    tu.write_text(instantiation_source())
    out = subprocess.run(["nvcc", "-arch=sm_90", "-std=c++17", "-cubin", "-Werror",
                          "all-warnings", "-I", str(KERNEL_DIR), "-o", str(tmp_path / "k.cubin"),
                          str(tu)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "k.cubin").stat().st_size > 0


# The NVRTC compile the loader does (hpcdl/kernels/nvrtc.py) is checked for sm_80 and
# sm_90 in tests/test_kernels_ptx.py: options, .entry parameters, ptxas budget, bounds.


# -- kernels vs references (GPU) -----------------------------------------------
def _cp_arrays(xs):
    import cupy

    return [cupy.asarray(x.view(np.uint16) if x.dtype == bfloat16 else x) for x in xs]


def _torch_cuda(x):
    import torch

    if x.dtype == bfloat16:
        return torch.from_numpy(x.view(np.int16)).cuda().view(torch.bfloat16)
    return torch.from_numpy(x).cuda()


def _to_numpy(t, dtype):
    import torch

    if dtype == bfloat16:
        return t.view(torch.int16).cpu().numpy().view(bfloat16)
    return t.cpu().numpy()


def _nan_like(x):
    import torch

    return torch.full_like(x, float("nan"))


@pytest.mark.gpu
@pytest.mark.parametrize("ntensors", [1, 7, 300])
@pytest.mark.parametrize("out_dtype", KDTYPES, ids=lambda d: d.name)
def test_gpu_pack_unpack_match_reference(ntensors, out_dtype):
    import torch

    from hpcdl.kernels import fusion

    rng = np.random.default_rng(10 + ntensors)
    host = [_random(rng, n, KDTYPES[i % 3]) for i, n in enumerate(_sizes(rng, ntensors))]
    lay = FusionLayout(tuple(h.size for h in host), tuple(h.dtype for h in host), 8192)
    dev = [_torch_cuda(h) for h in host]
    tdt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    for scale, mode in ((None, 0), (0.375, 1)):
        out = torch.full((lay.total,), float("nan"), dtype=tdt[out_dtype.name], device="cuda")
        fusion.pack(dev, out, scale=scale)
        expect = ref.pack(host, lay, out_dtype, 1.0 if scale is None else scale, mode)
        np.testing.assert_array_equal(_to_numpy(out, out_dtype).view(np.uint8), expect.view(np.uint8))
    buf_host = _random(rng, lay.total, out_dtype)
    buf = _torch_cuda(buf_host)
    for scale, acc in ((None, False), (0.5, False), (0.5, True)):
        targets = [_nan_like(d) if not acc else d.clone() for d in dev]
        expect = [np.full_like(h, np.nan) if not acc else h.copy() for h in host]
        fusion.unpack(buf, targets, scale=scale, accumulate=acc)
        mode = 2 if acc else (0 if scale is None else 1)
        ref.unpack(buf_host, expect, lay, 1.0 if scale is None else scale, mode)
        for t, e in zip(targets, expect):
            np.testing.assert_array_equal(_to_numpy(t, e.dtype).view(np.uint8), e.view(np.uint8))


@pytest.mark.gpu
@pytest.mark.parametrize("ntensors", [1, 5, 300])
@pytest.mark.parametrize("residual", [False, True])
def test_gpu_absmax_quantize_dequantize_match_reference(ntensors, residual):
    import torch

    from hpcdl.kernels import fusion

    rng = np.random.default_rng(20 + ntensors)
    host = [_random(rng, n, KDTYPES[i % 3], 10.0 ** rng.integers(-6, 4))
            for i, n in enumerate(_sizes(rng, ntensors))]
    lay = FusionLayout(tuple(h.size for h in host), tuple(h.dtype for h in host), 1024)
    dev = [_torch_cuda(h) for h in host]
    maxabs = torch.full((lay.nchunks,), float("nan"), device="cuda")
    fusion.chunk_absmax(dev, maxabs, chunk_elems=1024)
    m_ref = ref.chunk_absmax(host, lay)
    np.testing.assert_array_equal(maxabs.cpu().numpy(), m_ref)
    res_host = _random(rng, lay.total, np.float32, 1e-3) if residual else None
    res_dev = torch.from_numpy(res_host.copy()).cuda() if residual else None
    out = torch.full((lay.total,), float("nan"), dtype=torch.float16, device="cuda")
    scales = torch.full((lay.nchunks,), float("nan"), device="cuda")
    fusion.quantize_fp16(dev, maxabs, 3, out, scales, res_dev, chunk_elems=1024)
    q_ref, s_ref = ref.quantize_fp16(host, lay, m_ref, 3, res_host)
    np.testing.assert_array_equal(scales.cpu().numpy(), s_ref)
    np.testing.assert_array_equal(out.cpu().numpy().view(np.uint16), q_ref.view(np.uint16))
    if residual:
        np.testing.assert_array_equal(res_dev.cpu().numpy(), res_host)
    for acc in (False, True):
        targets = [d.clone() if acc else _nan_like(d) for d in dev]
        expect = [h.copy() if acc else np.full_like(h, np.nan) for h in host]
        fusion.dequantize_fp16(out, scales, targets, extra=0.5, accumulate=acc, chunk_elems=1024)
        ref.dequantize_fp16(q_ref, s_ref, expect, lay, extra=0.5, accumulate=acc)
        for t, e in zip(targets, expect):
            np.testing.assert_array_equal(_to_numpy(t, e.dtype).view(np.uint8), e.view(np.uint8))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", KDTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("op", ["sum", "prod", "min", "max"])
@pytest.mark.parametrize("n", [1, 7, 4099, 1 << 20])
def test_gpu_reduce_matches_reference(dtype, op, n):
    from hpcdl.kernels import fusion

    rng = np.random.default_rng(n)
    a, b = _random(rng, n, dtype), _random(rng, n, dtype)
    da, db = _torch_cuda(a), _torch_cuda(b)
    fusion.reduce_into(da, db, op)
    ref.reduce(a, b, ReduceOp(op))
    np.testing.assert_array_equal(_to_numpy(da, dtype).view(np.uint8), a.view(np.uint8))
    # misaligned views take the scalar path
    a2, b2 = _random(rng, n + 1, dtype), _random(rng, n + 1, dtype)
    da2, db2 = _torch_cuda(a2), _torch_cuda(b2)
    fusion.reduce_into(da2[1:], db2[:-1], op)
    ref.reduce(a2[1:], b2[:-1], ReduceOp(op))
    np.testing.assert_array_equal(_to_numpy(da2, dtype).view(np.uint8), a2.view(np.uint8))


@pytest.mark.gpu
def test_gpu_tables_are_cached_per_layout():
    import torch

    from hpcdl.kernels import fusion

    ts = [torch.ones(n, device="cuda") for n in (3, 5)]
    a, _ = fusion.multi_tensor(ts)
    b, _ = fusion.multi_tensor(ts)
    c, _ = fusion.multi_tensor(ts[::-1])
    assert a is b and a is not c


# -- the benchmark's CPU-side parts ---------------------------------------------
def _bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "kernels.py"
    spec = importlib.util.spec_from_file_location("bench_kernels", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_resnet50_shapes_and_table():
    bench = _bench()
    shapes = bench.resnet50_shapes()
    assert len(shapes) == 161 and sum(int(np.prod(s)) for s in shapes) == 25_557_032
    table = bench.format_table([{"op": "device copy", "bytes": 800, "time_us": 1.0, "gbps": 0.8},
                                {"op": "hpcdl pack", "bytes": 800, "time_us": 2.0, "gbps": 0.4}])
    assert "hpcdl pack" in table and "50.0%" in table


def test_benchmark_exits_clearly_without_a_gpu(capsys):
    from helpers.fakes import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present")
    assert _bench().main(["--iters", "1"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
