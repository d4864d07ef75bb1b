"""The argument tuple and launch shape of every kernel, in one place.

:mod:`hpcdl.kernels.fusion` launches the kernels on a GPU with these tuples, the CPU
harness (:mod:`hpcdl.kernels.cpu`) runs the same ``.cu`` sources with the same
tuples, and ``tests/test_kernels_ptx.py`` checks each tuple against the ``.entry``
parameter list of the compiled PTX: an argument added to a kernel but not here (or
passed as the wrong width) fails on a CPU instead of corrupting a GPU launch.
"""

from __future__ import annotations

import numpy as np

__all__ = ["THREADS", "GRID_PER_SM", "head_args", "pack_args", "unpack_args", "absmax_args",
           "quantize_args", "dequantize_args", "reduce_args", "multi_tensor_grid",
           "reduce_grid", "args_for"]

#: threads per block of every launch; the kernels' ``__launch_bounds__`` must equal it
THREADS = 256
#: blocks per SM at most; the blocks stride over the remaining chunks
GRID_PER_SM = 16


def _p(ptr: int) -> np.uint64:
    return np.uint64(ptr)


def head_args(tensors_ptr: int, chunks_ptr: int, nchunks: int, chunk_elems: int) -> tuple:
    """The multi-tensor kernels' first four parameters: the two tables and their sizes."""
    return (_p(tensors_ptr), _p(chunks_ptr), np.int32(nchunks), np.int32(chunk_elems))


def _mode(scale: float | None, accumulate: bool = False) -> tuple[np.float32, np.int32]:
    if accumulate:
        return np.float32(1.0 if scale is None else scale), np.int32(2)
    return (np.float32(1.0), np.int32(0)) if scale is None else (np.float32(scale), np.int32(1))


def pack_args(dst_ptr: int, scale: float | None) -> tuple:
    """``hpcdl_pack<T>`` after the head: destination, scale, mode (0 copy, 1 scale)."""
    return (_p(dst_ptr), *_mode(scale))


def unpack_args(src_ptr: int, scale: float | None, accumulate: bool) -> tuple:
    """``hpcdl_unpack<T>`` after the head: source, scale, mode (0, 1, or 2 accumulate)."""
    return (_p(src_ptr), *_mode(scale, accumulate))


def absmax_args(out_ptr: int) -> tuple:
    return (_p(out_ptr),)


def quantize_args(maxabs_ptr: int, world: int, out_ptr: int, scales_ptr: int,
                  residual_ptr: int) -> tuple:
    """``residual_ptr`` 0: no error feedback."""
    return (_p(maxabs_ptr), np.int32(world), _p(out_ptr), _p(scales_ptr), _p(residual_ptr))


def dequantize_args(payload_ptr: int, scales_ptr: int, extra: float, accumulate: bool) -> tuple:
    return (_p(payload_ptr), _p(scales_ptr), np.float32(extra), np.int32(2 if accumulate else 0))


def reduce_args(dst_ptr: int, src_ptr: int, n: int) -> tuple:
    return (_p(dst_ptr), _p(src_ptr), np.int64(n))


def multi_tensor_grid(nchunks: int, sms: int) -> int:
    """One block per chunk, at most ``GRID_PER_SM`` per SM (blocks then loop over chunks)."""
    return max(1, min(nchunks, sms * GRID_PER_SM))


def reduce_grid(n: int, itemsize: int, sms: int) -> int:
    """Enough blocks for one 16-byte vector per thread, at most ``GRID_PER_SM`` per SM."""
    vec = 16 // itemsize
    return max(1, min(-(-n // (THREADS * vec)), sms * GRID_PER_SM))


def args_for(name: str) -> tuple:
    """The tuple fusion.py passes to kernel ``name`` (a name expression), with dummy values.

    For checks of the parameter list (count, width, integer or float) without a GPU.
    """
    head = head_args(1, 2, 3, 64)
    if name.startswith("hpcdl_pack<"):
        return head + pack_args(4, 0.5)
    if name.startswith("hpcdl_unpack<"):
        return head + unpack_args(4, 0.5, True)
    if name == "hpcdl_chunk_absmax":
        return head + absmax_args(4)
    if name == "hpcdl_quantize_fp16":
        return head + quantize_args(4, 2, 5, 6, 7)
    if name == "hpcdl_dequantize_fp16":
        return head + dequantize_args(4, 5, 0.5, True)
    if name.startswith("hpcdl_reduce<"):
        return reduce_args(1, 2, 3)
    raise KeyError(f"no launch arguments known for kernel {name!r}")
