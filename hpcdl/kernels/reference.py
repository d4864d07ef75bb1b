"""NumPy reference of every kernel in this folder, step for step.

Each function does the float32 arithmetic its kernel does, in the same order
with the same rounding (the kernels use ``__fmul_rn``/``__fadd_rn`` so no FMA
contraction changes a result), so the GPU tests compare bit for bit. These
functions are also the CPU implementation: :class:`hpcdl.compression.FP16Compressor`
on NumPy input calls them directly.

Modes of pack/unpack (as in ``pack.cu``): 0 copy/cast, 1 scale, 2 scale and
accumulate into the destination (unpack only).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..ops import ReduceOp, reduce_into
from .layout import FusionLayout

__all__ = ["pack", "unpack", "chunk_absmax", "fp16_scales", "quantize_fp16", "dequantize_fp16",
           "reduce", "FP16_TARGET_EXPONENT"]

#: scales map world * maxabs into (2**14, 2**15]: sums of ``world`` ranks stay below 2**15
FP16_TARGET_EXPONENT = 15
_F32 = np.float32


def _convert(x: np.ndarray, old: np.ndarray | None, out_dtype: np.dtype, scale: float,
             mode: int) -> np.ndarray:
    if mode == 0:
        return x.astype(out_dtype)  # same dtype: a copy; else one rounding (RNE)
    v = x.astype(_F32) * _F32(scale)
    if mode == 2:
        v = old.astype(_F32) + v
    return v.astype(out_dtype)


def pack(srcs: Sequence[np.ndarray], layout: FusionLayout, out_dtype: np.dtype,
         scale: float = 1.0, mode: int = 0) -> np.ndarray:
    """The fusion buffer: every ``srcs[i]`` (flattened) at ``layout.offsets[i]``."""
    out = np.empty(layout.total, np.dtype(out_dtype))
    for x, off, n in zip(srcs, layout.offsets, layout.numels):
        out[off:off + n] = _convert(np.ravel(x), None, out.dtype, scale, mode)
    return out


def unpack(buf: np.ndarray, dsts: Sequence[np.ndarray], layout: FusionLayout,
           scale: float = 1.0, mode: int = 0) -> None:
    """The reverse of :func:`pack`, into ``dsts`` in place (mode 2 accumulates)."""
    for d, off, n in zip(dsts, layout.offsets, layout.numels):
        flat = d.reshape(-1)
        flat[...] = _convert(buf[off:off + n], flat, flat.dtype, scale, mode)


def _chunked(x: np.ndarray, chunk_elems: int, fill: float) -> np.ndarray:
    """``x`` as rows of ``chunk_elems`` (the last row padded with ``fill``)."""
    x = np.ravel(x).astype(_F32)
    rows = -(-x.size // chunk_elems)
    padded = np.full(rows * chunk_elems, fill, _F32)
    padded[:x.size] = x
    return padded.reshape(rows, chunk_elems)


def chunk_absmax(srcs: Sequence[np.ndarray], layout: FusionLayout) -> np.ndarray:
    """Max |x| per chunk-table entry, float32; a non-finite value makes it +inf."""
    parts = []
    for x in srcs:
        if np.size(x) == 0:
            continue
        a = np.abs(_chunked(x, layout.chunk_elems, 0.0))
        a[~np.isfinite(a)] = np.inf
        parts.append(a.max(axis=1))
    return np.concatenate(parts).astype(_F32) if parts else np.zeros(0, _F32)


def fp16_scales(maxabs: np.ndarray, world: int) -> np.ndarray:
    """Per chunk ``2**k``: the largest power of two with ``maxabs * world * 2**k <= 2**15``.

    Zero and non-finite maxima get scale 1 (nothing to scale; inf/NaN must
    come out as inf/NaN so an overflow check still sees them).
    """
    m = np.asarray(maxabs, _F32)
    _, e = np.frexp(m.astype(np.float64) * float(world))
    k = np.clip(FP16_TARGET_EXPONENT - e, -126, 126)
    scales = np.ldexp(_F32(1.0), k).astype(_F32)
    scales[~(m > 0) | np.isinf(m)] = 1.0
    return scales


def quantize_fp16(srcs: Sequence[np.ndarray], layout: FusionLayout, maxabs: np.ndarray,
                  world: int, residual: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(payload float16[layout.total], scales float32[nchunks])``.

    ``maxabs`` is the allreduced (op=max) :func:`chunk_absmax`. With
    ``residual`` (float32[layout.total]) the error feedback of the kernel:
    ``v = x + residual``; ``residual = v - fp16(v * s) / s`` (0 where not finite).
    """
    scales = fp16_scales(maxabs, world)
    payload = np.empty(layout.total, np.float16)
    ce = layout.chunk_elems
    with np.errstate(over="ignore", invalid="ignore"):
        for x, off, n, c0 in zip(srcs, layout.offsets, layout.numels, layout.chunk_starts):
            if n == 0:
                continue
            s = np.repeat(scales[c0:c0 + -(-n // ce)], ce)[:n]
            v = np.ravel(x).astype(_F32)
            if residual is not None:
                v = v + residual[off:off + n]
            q = (v * s).astype(np.float16)
            payload[off:off + n] = q
            if residual is not None:
                r = v - q.astype(_F32) * (_F32(1.0) / s)
                r[~np.isfinite(r)] = 0.0
                residual[off:off + n] = r
    return payload, scales


def dequantize_fp16(payload: np.ndarray, scales: np.ndarray, dsts: Sequence[np.ndarray],
                    layout: FusionLayout, extra: float = 1.0, accumulate: bool = False) -> None:
    """``dst = cast(q * (1/s * extra))`` per chunk, or added to ``dst`` when ``accumulate``."""
    ce = layout.chunk_elems
    factors = (_F32(1.0) / scales.astype(_F32)) * _F32(extra)
    for d, off, n, c0 in zip(dsts, layout.offsets, layout.numels, layout.chunk_starts):
        if n == 0:
            continue
        f = np.repeat(factors[c0:c0 + -(-n // ce)], ce)[:n]
        flat = d.reshape(-1)
        v = payload[off:off + n].astype(_F32) * f
        if accumulate:
            v = flat.astype(_F32) + v
        flat[...] = v.astype(flat.dtype)


def reduce(dst: np.ndarray, src: np.ndarray, op: ReduceOp) -> None:
    """``dst = dst (op) src`` in place: float32 math, one rounding (``reduce.cu``)."""
    reduce_into(dst, src, op)
