"""Every kernel instance against hpcdl/kernels/reference.py, bit for bit, on the CPU harness.

A case is ``(name, fn)``; ``fn(harness)`` raises AssertionError naming the first
element that differs. Cases cover every dtype and mode, residual on and off,
aligned, misaligned and mixed buffers, one tensor and ten of mixed dtypes (a
zero-size one among them), grids of 1-3 blocks that loop over many chunks, and "special"
values: subnormals of each dtype, a tensor of only float32 subnormals (the chunk
whose absmax a flush-to-zero build would turn to 0), NaN, +-inf, -0.0 and values
that overflow float16. Outputs are poisoned with NaN before each launch, so an
element a kernel forgets to write is a mismatch.

NaN compares as NaN: a GPU's (and cuda_fp16.h's) conversions make a canonical NaN
where NumPy keeps a payload; same-dtype copies must keep the bits exactly.
"""

from __future__ import annotations

import itertools
from typing import Callable

import numpy as np

from .. import CTYPES, REDUCE_OPS
from .. import reference as ref
from ..launch_args import (absmax_args, dequantize_args, pack_args, quantize_args, reduce_args,
                           unpack_args)
from ..layout import FusionLayout
from ...ops import ReduceOp, bfloat16
from .runner import CpuMultiTensor, Harness

__all__ = ["DTYPES", "cases", "assert_same"]

DTYPES = [np.dtype(np.float32), np.dtype(np.float16), np.dtype(bfloat16)]
_TINY = {"float32": 1e-40, "float16": 3e-6, "bfloat16": 1e-39}  # subnormal in each dtype
_SIZES = [1, 3, 0, 7, 8, 31, 100, 257, 1000]
Case = Callable[[Harness], None]


def _values(rng: np.random.Generator, n: int, dtype: np.dtype, special: bool) -> np.ndarray:
    x = rng.standard_normal(n) * 4.0
    x = np.where(np.abs(x) < 1e-3, 1.0, x)  # never zero: a zero hides an unwritten element
    if special and n:
        pick = rng.integers(0, 8, n)
        tiny = _TINY[dtype.name] * rng.uniform(0.5, 2.0, n) * rng.choice([-1, 1], n)
        x = np.where(pick == 0, tiny, x)
        x = np.where(pick == 1, rng.choice([np.inf, -np.inf, np.nan, -0.0, 7e4, 3e38], n), x)
    with np.errstate(over="ignore"):
        return x.astype(dtype)


def _tensors(rng, dtypes, special: bool, many: bool) -> list[np.ndarray]:
    """One tensor of ``dtypes[0]`` (79 chunks of 64), or nine-ten cycling through ``dtypes``."""
    if not many:
        x = _values(rng, 5003, dtypes[0], special)
        if special and dtypes[0] == np.float32:
            x[64:128] = rng.uniform(1, 2, 64) * 1e-39  # a whole chunk of subnormals
        return [x]
    out = [_values(rng, n, dtypes[i % len(dtypes)], special) for i, n in enumerate(_SIZES)]
    if special:  # a whole chunk of float32 subnormals: absmax must not flush to 0
        out.append((rng.uniform(1, 2, 70) * 1e-39).astype(np.float32))
    return out


def assert_same(got: np.ndarray, want: np.ndarray, what: str, nan_payload: bool = False) -> None:
    """Equal bits, or both NaN unless ``nan_payload`` (then NaN bits must match too)."""
    g = np.ravel(got).view(f"u{got.dtype.itemsize}")
    w = np.ravel(want).view(f"u{want.dtype.itemsize}")
    assert got.dtype == want.dtype and g.size == w.size, (what, got.dtype, want.dtype)
    same = g == w
    if not nan_payload:
        gf, wf = np.ravel(got).astype(np.float32), np.ravel(want).astype(np.float32)
        same |= np.isnan(gf) & np.isnan(wf)
    if not same.all():
        i = int(np.flatnonzero(~same)[0])
        raise AssertionError(f"{what}: {int((~same).sum())} of {g.size} elements differ; first at "
                             f"{i}: kernel {np.ravel(got)[i]!r} (0x{int(g[i]):x}) vs reference "
                             f"{np.ravel(want)[i]!r} (0x{int(w[i]):x})")


def _misalign(layout: FusionLayout, align: str) -> list[int]:
    if align == "aligned":
        return [0] * len(layout.numels)
    step = [d.itemsize for d in layout.dtypes]
    return step if align == "misaligned" else [s if i % 2 else 0 for i, s in enumerate(step)]


def _setup(h, seed, dtypes, special, align, chunk_elems, many=True):
    rng = np.random.default_rng(seed)
    srcs = _tensors(rng, dtypes, special, many)
    lay = FusionLayout(tuple(s.size for s in srcs), tuple(s.dtype for s in srcs), chunk_elems)
    return rng, srcs, lay, CpuMultiTensor(h, srcs, lay, _misalign(lay, align))


def _buffer(h, values: np.ndarray, align: str) -> int:
    return h.upload(values, values.dtype.itemsize if align != "aligned" else 0)


def _pack_case(out_dtype, many, special, align, grid) -> Case:
    def run(h: Harness) -> None:
        dtypes = DTYPES if many else [out_dtype]
        for mode, scale in ((0, None), (1, 0.3)):
            _, srcs, lay, mt = _setup(h, 1, dtypes, special, align, 64, many)
            buf = _buffer(h, np.full(lay.total, np.nan, out_dtype), align)
            h.launch(f"hpcdl_pack<{CTYPES[out_dtype.name]}>", grid,
                     mt.head() + pack_args(buf, scale), seed=mode)
            want = ref.pack(srcs, lay, out_dtype, 1.0 if scale is None else scale, mode)
            got = h.download(buf, lay.total, out_dtype)
            assert_same(got, want, f"pack mode {mode}")
            if mode == 0:  # a same-dtype copy moves bits, NaN payloads included
                for off, n, d in zip(lay.offsets, lay.numels, lay.dtypes):
                    if d == out_dtype:
                        assert_same(got[off:off + n], want[off:off + n], "raw copy", True)
    return run


def _unpack_case(buf_dtype, many, special, align, grid) -> Case:
    def run(h: Harness) -> None:
        dtypes = DTYPES if many else [buf_dtype]
        for mode, scale in ((0, None), (1, 0.3), (2, 0.3)):
            rng, dsts, lay, mt = _setup(h, 2, dtypes, special, align, 64, many)
            values = _values(rng, lay.total, buf_dtype, special)
            if mode != 2:  # the destination is an input only when accumulating
                for p, n, d in zip(mt.ptrs, lay.numels, lay.dtypes):
                    h.write(p, np.full(n, np.nan, d))
            src = _buffer(h, values, align)
            h.launch(f"hpcdl_unpack<{CTYPES[buf_dtype.name]}>", grid,
                     mt.head() + unpack_args(src, scale, mode == 2), seed=mode)
            want = [d.copy() for d in dsts]
            ref.unpack(values, want, lay, 1.0 if scale is None else scale, mode)
            for i, (g, w) in enumerate(zip(mt.tensors(), want)):
                assert_same(g, w, f"unpack mode {mode}, tensor {i}")
    return run


def _quantize_case(many, special, align, grid, residual, world) -> Case:
    def run(h: Harness) -> None:
        rng, srcs, lay, mt = _setup(h, 3, DTYPES if many else DTYPES[:1], special, align, 64,
                                    many)
        nch = lay.nchunks
        maxabs = h.upload(np.full(nch, np.nan, np.float32))
        h.launch("hpcdl_chunk_absmax", grid, mt.head() + absmax_args(maxabs))
        want_m = ref.chunk_absmax(srcs, lay)
        assert_same(h.download(maxabs, nch, np.float32), want_m, "chunk_absmax")
        res0 = (rng.standard_normal(lay.total) * 1e-3).astype(np.float32)
        res = _buffer(h, res0, align) if residual else 0
        out = _buffer(h, np.full(lay.total, np.nan, np.float16), align)
        scales = h.upload(np.full(nch, np.nan, np.float32))
        h.launch("hpcdl_quantize_fp16", grid, mt.head() + quantize_args(maxabs, world, out, scales, res))
        want_res = res0.copy() if residual else None
        want_q, want_s = ref.quantize_fp16(srcs, lay, want_m, world, want_res)
        q = h.download(out, lay.total, np.float16)
        assert_same(q, want_q, "quantize_fp16 payload")
        assert_same(h.download(scales, nch, np.float32), want_s, "quantize_fp16 scales")
        if residual:
            assert_same(h.download(res, lay.total, np.float32), want_res, "quantize_fp16 residual")
        for accumulate in (False, True):
            want = mt.tensors()
            ref.dequantize_fp16(want_q, want_s, want, lay, extra=1 / 3, accumulate=accumulate)
            h.launch("hpcdl_dequantize_fp16", grid,
                     mt.head() + dequantize_args(out, scales, 1 / 3, accumulate))
            for i, (g, w) in enumerate(zip(mt.tensors(), want)):
                assert_same(g, w, f"dequantize_fp16 accumulate={accumulate}, tensor {i}")
    return run


def _reduce_case(dtype, op, special, align, grid) -> Case:
    def run(h: Harness) -> None:
        rng = np.random.default_rng(4)
        n = 5003  # vectors, then a scalar tail; a 2-block grid strides over it 3 times
        a, b = _values(rng, n, dtype, special), _values(rng, n, dtype, special)
        dst, src = _buffer(h, a, align), _buffer(h, b, align)
        h.launch(f"hpcdl_reduce<{CTYPES[dtype.name]}, {REDUCE_OPS[op]}>", grid,
                 reduce_args(dst, src, n))
        want = a.copy()
        with np.errstate(all="ignore"):
            ref.reduce(want, b, ReduceOp(op))
        assert_same(h.download(dst, n, dtype), want, f"reduce {op}")
    return run


def cases(grids: tuple[int, ...] = (1, 3)) -> list[tuple[str, Case]]:
    """Every case, named ``kernel-variant``; ``grids`` are the block counts tried."""
    out = []
    flags = list(itertools.product((False, True), ("aligned", "misaligned", "mixed")))
    for i, (dt, many, (special, align)) in enumerate(
            itertools.product(DTYPES, (False, True), flags)):
        grid = grids[i % len(grids)]
        tag = f"{dt.name}-{'many' if many else 'one'}-{'special' if special else 'random'}-{align}-g{grid}"
        out.append((f"pack-{tag}", _pack_case(dt, many, special, align, grid)))
        out.append((f"unpack-{tag}", _unpack_case(dt, many, special, align, grid)))
    for i, (many, (special, align), residual) in enumerate(
            itertools.product((False, True), flags, (False, True))):
        grid, world = grids[i % len(grids)], (1, 3)[i % 2]
        tag = (f"{'many' if many else 'one'}-{'special' if special else 'random'}-{align}-"
               f"{'residual' if residual else 'noresidual'}-w{world}-g{grid}")
        out.append((f"quantize-{tag}", _quantize_case(many, special, align, grid, residual, world)))
    for i, (dt, op, special, align) in enumerate(itertools.product(
            DTYPES, REDUCE_OPS, (False, True), ("aligned", "misaligned"))):
        grid = grids[i % len(grids)]
        tag = f"{dt.name}-{op}-{'special' if special else 'random'}-{align}-g{grid}"
        out.append((f"reduce-{tag}", _reduce_case(dt, op, special, align, grid)))
    return out
