"""Optional FP16 pushes through :class:`hpcdl.compression.FP16Compressor`.

A push is one worker's gradient, not a sum over ranks, so the compressor runs
on a one-rank communicator (``COMM_SELF``): its per-chunk power-of-two scales
come from this gradient alone. On the wire: the float16 payload followed by the
float32 scales, one per ``chunk_size`` elements (half the bytes of float32).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..compression.fp16 import FP16Compressor, FP16Context

__all__ = ["encode_fp16", "decode_fp16", "wire_bytes"]


@lru_cache(maxsize=1)
def _compressor() -> FP16Compressor:
    from mpi4py import MPI

    from ..comm.mpi import MPICommunicator

    return FP16Compressor(comm=MPICommunicator(MPI.COMM_SELF))


def wire_bytes(n: int) -> int:
    chunk = _compressor().chunk_size
    return 2 * n + 4 * (-(-n // chunk))


def encode_fp16(flat: np.ndarray) -> np.ndarray:
    """``flat`` (float32/64) as the bytes of its float16 payload and its chunk scales."""
    payload, ctx = _compressor().compress(flat)
    return np.concatenate([np.ravel(payload).view(np.uint8),
                           np.asarray(ctx.scales, np.float32).view(np.uint8)])


def decode_fp16(buf: np.ndarray, n: int, dtype: np.dtype) -> np.ndarray:
    c = _compressor()
    payload = buf[:2 * n].view(np.float16)
    scales = buf[2 * n:].view(np.float32)
    return c.decompress(payload, FP16Context(np.dtype(dtype), (n,), scales, c.chunk_size,
                                             "numpy"))
