"""Launching the kernels on device arrays (torch CUDA tensors, CuPy arrays, CAI objects).

Arrays are passed to the kernels by pointer (``data_ptr()`` / the CUDA array
interface): no copy and no DLPack round trip, and bfloat16 works whether or not
CuPy has a dtype for it. Each launch goes on the producer's current stream
(torch's current stream for torch tensors, the array's CAI stream or CuPy's
current stream otherwise), so it is ordered after whatever wrote the inputs.

The multi-tensor tables (:class:`MultiTensor`) are uploaded once per
(device, pointers, layout) and kept in a small LRU: a training step that packs
the same gradient tensors every iteration builds nothing after the first one.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Sequence

import numpy as np

from ..buffers import as_buffer
from ..errors import DeviceMismatchError, DtypeError, InvalidArgumentError
from ..ops import KERNEL_DTYPES, TORCH_DTYPES, ReduceOp, dtype_name, parse_op
from .loader import get_kernel
from .sources import CTYPES, REDUCE_OPS
from .launch_args import (THREADS, absmax_args, dequantize_args, head_args, multi_tensor_grid,
                          pack_args, quantize_args, reduce_args, reduce_grid, unpack_args)
from .layout import DEFAULT_CHUNK_ELEMS, DTYPE_CODES, FusionLayout, make_layout

__all__ = ["MultiTensor", "multi_tensor", "pack", "unpack", "chunk_absmax", "quantize_fp16",
           "dequantize_fp16", "reduce_into", "THREADS"]

_LRU_SIZE = 64


def _torch_dtype(t: Any) -> np.dtype:
    dtype = TORCH_DTYPES.get(str(t.dtype))
    if dtype not in DTYPE_CODES:
        raise DtypeError(f"{t.dtype} is not a kernel dtype ({', '.join(KERNEL_DTYPES)})",
                         op="kernels")
    return dtype


def describe(arrays: Sequence[Any], op: str) -> tuple[list[int], list[int], list[np.dtype], int, int | None]:
    """``(ptrs, numels, dtypes, device, stream)`` of device arrays, all on one device."""
    ptrs, numels, dtypes = [], [], []
    devices: set[int] = set()
    stream = None
    for i, a in enumerate(arrays):
        if type(a).__module__.split(".")[0] == "torch":
            # the fast path: 161 gradients must not cost a millisecond of Python
            if a.device.type != "cuda" or not a.is_contiguous():
                raise DeviceMismatchError(f"tensor {i} must be a contiguous CUDA tensor, got "
                                          f"{a.device} (contiguous={a.is_contiguous()})", op=op)
            ptrs.append(a.data_ptr())
            numels.append(a.numel())
            dtypes.append(_torch_dtype(a))
            devices.add(a.device.index)
        else:
            b = as_buffer(a, arg=f"tensors[{i}]", op=op)
            if not b.is_device:
                raise DeviceMismatchError(f"tensor {i} is a host array; the kernels need device "
                                          "memory (use hpcdl.kernels.reference on the host)", op=op)
            ptrs.append(b.ptr)
            numels.append(b.size)
            dtypes.append(b.dtype)
            devices.add(int(b.device))
            stream = b.stream if stream is None else stream
    if len(devices) > 1:
        raise DeviceMismatchError(f"arrays are on devices {sorted(devices)}; one launch needs "
                                  "them all on one", op=op)
    device = devices.pop() if devices else _current_device()
    if arrays and type(arrays[0]).__module__.split(".")[0] == "torch":
        import torch

        stream = torch.cuda.current_stream(device).cuda_stream
    return ptrs, numels, dtypes, device, stream


def _current_device() -> int:
    import cupy

    return cupy.cuda.Device().id


def _stream(stream: int | None, device: int) -> Any:
    import cupy

    if stream is None:
        return cupy.cuda.get_current_stream()
    if stream in (0, 1, 2):  # CAI's legacy (1) and per-thread (2) default streams
        return cupy.cuda.Stream.ptds if stream == 2 else cupy.cuda.Stream.null
    return cupy.cuda.ExternalStream(stream, device)


class MultiTensor:
    """Tensors at fixed pointers, their layout, and the layout's tables in device memory."""

    def __init__(self, ptrs: Sequence[int], layout: FusionLayout, device: int) -> None:
        import cupy

        self.layout = layout
        self.device = device
        with cupy.cuda.Device(device):
            self._tensors = cupy.asarray(layout.tensor_table(ptrs).view(np.uint8))
            self._chunks = cupy.asarray(layout.chunk_table.view(np.uint8))
            cupy.cuda.Stream.null.synchronize()  # uploaded before any stream uses them
            sms = cupy.cuda.Device(device).attributes["MultiProcessorCount"]
        self.nchunks = layout.nchunks
        self.grid = multi_tensor_grid(self.nchunks, sms)

    def _head(self) -> tuple:
        return head_args(self._tensors.data.ptr, self._chunks.data.ptr, self.nchunks,
                         self.layout.chunk_elems)

    def launch(self, module: str, name: str, args: tuple, stream: int | None) -> None:
        if self.nchunks == 0:
            return
        kern = get_kernel(module, name, self.device)
        import cupy

        with cupy.cuda.Device(self.device), _stream(stream, self.device):
            kern((self.grid,), (THREADS,), self._head() + args)


_CACHE: "collections.OrderedDict[tuple, MultiTensor]" = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()


def multi_tensor(tensors: Sequence[Any], chunk_elems: int = DEFAULT_CHUNK_ELEMS,
                 op: str = "pack") -> tuple[MultiTensor, int | None]:
    """The (cached) :class:`MultiTensor` for ``tensors`` and the stream to launch on."""
    ptrs, numels, dtypes, device, stream = describe(tensors, op)
    layout = make_layout(numels, dtypes, chunk_elems, op=op)
    key = (device, tuple(ptrs), layout)
    with _CACHE_LOCK:
        mt = _CACHE.get(key)
        if mt is not None:
            _CACHE.move_to_end(key)
            return mt, stream
    mt = MultiTensor(ptrs, layout, device)
    with _CACHE_LOCK:
        _CACHE[key] = mt
        while len(_CACHE) > _LRU_SIZE:
            _CACHE.popitem(last=False)
    return mt, stream


def _flat_device(a: Any, count: int, dtype: np.dtype | None, arg: str, op: str) -> tuple[int, np.dtype]:
    b = as_buffer(a, arg=arg, writable=True, op=op)
    if not b.is_device:
        raise DeviceMismatchError(f"argument '{arg}' must be device memory", op=op)
    if b.size != count:
        raise InvalidArgumentError(f"argument '{arg}' holds {b.size} elements, expected {count}",
                                   op=op)
    if dtype is not None and b.dtype != dtype:
        raise DtypeError(f"argument '{arg}' is {dtype_name(b.dtype)}, expected "
                         f"{dtype_name(dtype)}", op=op)
    if b.dtype not in DTYPE_CODES:
        raise DtypeError(f"argument '{arg}' is {dtype_name(b.dtype)}; kernels take float32, "
                         "float16, bfloat16", op=op)
    return b.ptr, b.dtype


def pack(tensors: Sequence[Any], out: Any, *, scale: float | None = None,
         chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> Any:
    """Copy ``tensors`` back to back into the flat ``out`` (cast to its dtype, times ``scale``)."""
    mt, stream = multi_tensor(tensors, chunk_elems, "pack")
    ptr, dt = _flat_device(out, mt.layout.total, None, "out", "pack")
    mt.launch("pack", f"hpcdl_pack<{CTYPES[dt.name]}>", pack_args(ptr, scale), stream)
    return out


def unpack(buf: Any, tensors: Sequence[Any], *, scale: float | None = None,
           accumulate: bool = False, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> None:
    """The reverse of :func:`pack`; ``accumulate`` adds into the tensors instead."""
    mt, stream = multi_tensor(tensors, chunk_elems, "unpack")
    ptr, dt = _flat_device(buf, mt.layout.total, None, "buf", "unpack")
    mt.launch("pack", f"hpcdl_unpack<{CTYPES[dt.name]}>", unpack_args(ptr, scale, accumulate), stream)


def chunk_absmax(tensors: Sequence[Any], out: Any, *,
                 chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> Any:
    """``out[c]`` = max |x| over chunk ``c`` (float32, one per chunk-table entry)."""
    mt, stream = multi_tensor(tensors, chunk_elems, "chunk_absmax")
    ptr, _ = _flat_device(out, mt.nchunks, np.dtype(np.float32), "out", "chunk_absmax")
    mt.launch("quantize", "hpcdl_chunk_absmax", absmax_args(ptr), stream)
    return out


def quantize_fp16(tensors: Sequence[Any], maxabs: Any, world: int, out: Any, scales: Any,
                  residual: Any = None, *, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> Any:
    """Pack ``tensors`` into the float16 ``out`` with per-chunk scales (see ``quantize.cu``)."""
    mt, stream = multi_tensor(tensors, chunk_elems, "quantize_fp16")
    f32 = np.dtype(np.float32)
    m, _ = _flat_device(maxabs, mt.nchunks, f32, "maxabs", "quantize_fp16")
    s, _ = _flat_device(scales, mt.nchunks, f32, "scales", "quantize_fp16")
    o, _ = _flat_device(out, mt.layout.total, np.dtype(np.float16), "out", "quantize_fp16")
    r = 0 if residual is None else _flat_device(residual, mt.layout.total, f32, "residual",
                                                "quantize_fp16")[0]
    mt.launch("quantize", "hpcdl_quantize_fp16",
              quantize_args(m, world, o, s, r), stream)
    return out


def dequantize_fp16(payload: Any, scales: Any, tensors: Sequence[Any], *, extra: float = 1.0,
                    accumulate: bool = False, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> None:
    """Unpack the float16 ``payload`` into ``tensors``: ``q / scale * extra`` (or added)."""
    mt, stream = multi_tensor(tensors, chunk_elems, "dequantize_fp16")
    p, _ = _flat_device(payload, mt.layout.total, np.dtype(np.float16), "payload",
                        "dequantize_fp16")
    s, _ = _flat_device(scales, mt.nchunks, np.dtype(np.float32), "scales", "dequantize_fp16")
    mt.launch("quantize", "hpcdl_dequantize_fp16",
              dequantize_args(p, s, extra, accumulate), stream)


def reduce_into(dst: Any, src: Any, op: "str | ReduceOp") -> None:
    """``dst = dst (op) src`` on device (float32 math, one rounding); ``avg`` reduces as sum."""
    rop = parse_op(op, op_name="reduce")
    name = "sum" if rop in (ReduceOp.SUM, ReduceOp.AVG) else rop.value
    ptrs, numels, dtypes, device, stream = describe([dst, src], "reduce")
    if numels[0] != numels[1] or dtypes[0] != dtypes[1]:
        raise InvalidArgumentError(f"dst is {dtype_name(dtypes[0])}[{numels[0]}] but src is "
                                   f"{dtype_name(dtypes[1])}[{numels[1]}]", op="reduce")
    if numels[0] == 0:
        return
    import cupy

    kern = get_kernel("reduce", f"hpcdl_reduce<{CTYPES[dtypes[0].name]}, {REDUCE_OPS[name]}>",
                      device)
    with cupy.cuda.Device(device), _stream(stream, device):
        sms = cupy.cuda.Device(device).attributes["MultiProcessorCount"]
        grid = reduce_grid(numels[0], dtypes[0].itemsize, sms)
        kern((grid,), (THREADS,), reduce_args(ptrs[0], ptrs[1], numels[0]))
