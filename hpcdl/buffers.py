"""One adapter for every array type a collective accepts.

:func:`as_buffer` turns a NumPy array, a PyTorch tensor (CPU or CUDA), a CuPy
array, or any object exposing ``__cuda_array_interface__`` into a
:class:`Buffer` without copying:

* host memory becomes a flat NumPy view (buffer protocol; torch ``.numpy()``;
  bfloat16 tensors are viewed through int16 as ``ml_dtypes.bfloat16``);
* device memory is described by pointer, byte count, device and stream, from
  ``__cuda_array_interface__`` or, for torch (whose interface refuses
  bfloat16), from ``data_ptr()``.

Nothing here imports torch or cupy: an object is recognised by its type's
module, so a CPU-only job never pays for importing either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .device import CupyDevice, backend_for, host_view
from .errors import ContiguityError, DeviceMismatchError, DtypeError, InvalidArgumentError
from .ops import SUPPORTED_DTYPES, TORCH_DTYPES, bfloat16, check_dtype, dtype_name

__all__ = ["Buffer", "as_buffer", "check_same_device", "empty_like", "host_view"]



@dataclass
class Buffer:
    """A contiguous block of elements, on the host or on one CUDA device."""

    obj: Any                   # what the caller passed
    kind: str                  # "numpy" | "torch" | "cupy" | "cuda_array_interface"
    dtype: np.dtype
    shape: tuple[int, ...]
    device: int | None         # None: host memory; else the CUDA device ordinal
    host: np.ndarray | None    # flat zero-copy view, for host memory only
    address: int | None        # address of the first element (None: computed on demand)
    stream: int | None = None  # CUDA stream the producer last used (None: legacy default)
    # Waits for the producer's work queued *before* this Buffer was made: an event
    # recorded on ``stream`` at enqueue time (device.record_ready), not a stream sync.
    sync: Callable[[], None] | None = None

    @property
    def ptr(self) -> int:
        """Address of the first element (looked up lazily for host arrays: it costs ~3 us)."""
        if self.address is None:
            self.address = int(self.host.__array_interface__["data"][0])  # type: ignore[union-attr]
        return self.address

    def __post_init__(self) -> None:
        # computed once: these are read several times per collective, on the hot path
        self.size: int = math.prod(self.shape)
        self.nbytes: int = self.size * self.dtype.itemsize

    @property
    def is_device(self) -> bool:
        return self.device is not None

    def describe(self) -> str:
        where = "host" if self.device is None else f"cuda:{self.device}"
        return f"{self.kind} {dtype_name(self.dtype)}{list(self.shape)} on {where}"


def _type_module(obj: Any) -> str:
    return type(obj).__module__.split(".")[0]


def _host_from_numpy(a: np.ndarray, where: dict, arg: str, writable: bool) -> np.ndarray:
    if not a.flags.c_contiguous:
        raise ContiguityError(f"argument '{arg}' ({dtype_name(a.dtype)}{list(a.shape)}) is not "
                              "C-contiguous; pass np.ascontiguousarray(x) or x.copy()", **where)
    if writable and not a.flags.writeable:
        raise InvalidArgumentError(f"argument '{arg}' is read-only but the result is written "
                                   "into it", **where)
    return a.reshape(-1)


def _from_numpy(a: np.ndarray, where: dict, arg: str, writable: bool) -> Buffer:
    check_dtype(a.dtype, None, rank=where["rank"], op_name=where["op"])
    host = _host_from_numpy(a, where, arg, writable)
    return Buffer(a, "numpy", a.dtype, a.shape, None, host, None)


def _from_torch(t: Any, where: dict, arg: str, writable: bool) -> Buffer:
    import torch  # the caller already has it imported: t is a tensor

    dtype = TORCH_DTYPES.get(str(t.dtype))
    if dtype is None:
        raise DtypeError(f"argument '{arg}' has torch dtype {t.dtype}; supported: "
                         f"{', '.join(SUPPORTED_DTYPES)}", **where)
    name = dtype.name
    if t.layout != torch.strided:
        raise DtypeError(f"argument '{arg}' is a {t.layout} tensor; only dense tensors are "
                         "supported", **where)
    if not t.is_contiguous():
        raise ContiguityError(f"argument '{arg}' (torch {name}{list(t.shape)}) is not "
                              "contiguous; pass x.contiguous()", **where)
    if t.device.type == "cpu":
        d = t.detach()
        host = d.view(torch.int16).numpy().view(bfloat16) if name == "bfloat16" else d.numpy()
        return Buffer(t, "torch", dtype, tuple(t.shape), None, host.reshape(-1), t.data_ptr())
    if t.device.type == "cuda":
        dev = t.device.index if t.device.index is not None else torch.cuda.current_device()
        stream = torch.cuda.current_stream(dev)
        buf = Buffer(t, "torch", dtype, tuple(t.shape), dev, None, t.data_ptr(),
                     stream.cuda_stream)
        buf.sync = backend_for(buf).ready_event(stream, dev)  # torch alone: no CuPy
        return buf
    raise DeviceMismatchError(f"argument '{arg}' is on device {t.device}; hpcdl supports cpu "
                              "and cuda tensors", **where)




def _from_cai(obj: Any, kind: str, where: dict, arg: str, writable: bool) -> Buffer:
    cai = obj.__cuda_array_interface__
    shape = tuple(int(s) for s in cai["shape"])
    try:
        dtype = np.dtype(cai["typestr"])
    except TypeError:
        raise DtypeError(f"argument '{arg}' has typestr {cai['typestr']!r}", **where) from None
    check_dtype(dtype, None, rank=where["rank"], op_name=where["op"])
    ptr, readonly = cai["data"]
    strides = cai.get("strides")
    if strides is not None:
        expect = [dtype.itemsize]
        for s in reversed(shape[1:]):
            expect.insert(0, expect[0] * s)
        if any(n > 1 and int(st) != e for n, st, e in zip(shape, strides, expect)):
            raise ContiguityError(f"argument '{arg}' ({kind} {dtype_name(dtype)}{list(shape)}, "
                                  f"strides {tuple(strides)}) is not C-contiguous", **where)
    if writable and readonly:
        raise InvalidArgumentError(f"argument '{arg}' is read-only but the result is written "
                                   "into it", **where)
    stream = cai.get("stream")
    buf = Buffer(obj, kind, dtype, shape, 0, None, int(ptr or 0), stream)
    backend = backend_for(buf)
    if math.prod(shape) and isinstance(backend, CupyDevice):
        buf.device = backend.device_of(buf.ptr)
    if stream is not None:  # CAI v3: None means the producer needs no synchronisation
        buf.sync = backend.ready_event(stream, buf.device)
    return buf


def as_buffer(obj: Any, *, arg: str = "tensor", writable: bool = False,
              rank: int | None = None, op: str | None = None) -> Buffer:
    """Describe ``obj`` as a :class:`Buffer`, or raise an :class:`HpcdlError` naming ``arg``."""
    where = {"rank": rank, "op": op}
    if isinstance(obj, np.ndarray):
        return _from_numpy(obj, where, arg, writable)
    module = _type_module(obj)
    if module == "torch":
        return _from_torch(obj, where, arg, writable)
    if hasattr(obj, "__cuda_array_interface__"):
        return _from_cai(obj, "cupy" if module == "cupy" else "cuda_array_interface",
                         where, arg, writable)
    raise DtypeError(f"argument '{arg}' is a {type(obj).__module__}.{type(obj).__qualname__}; "
                     "pass a numpy array, a torch tensor, a cupy array or an object with "
                     "__cuda_array_interface__", **where)


def check_same_device(a: Buffer, b: Buffer, *, rank: int | None, op: str) -> None:
    if a.device != b.device:
        raise DeviceMismatchError(f"input is {a.describe()} but output is {b.describe()}; "
                                  "both must be on the same device", rank=rank, op=op)
    if a.dtype != b.dtype:
        raise DtypeError(f"input dtype {dtype_name(a.dtype)} differs from output dtype "
                         f"{dtype_name(b.dtype)}", rank=rank, op=op)


def empty_like(buf: Buffer, shape: tuple[int, ...], *, rank: int | None, op: str) -> Any:
    """A new array of ``buf``'s kind, dtype and device with ``shape`` (for ``out=None``)."""
    if buf.kind == "numpy":
        return np.empty(shape, buf.dtype)
    if buf.kind == "torch":
        return buf.obj.new_empty(shape)
    if buf.kind == "cupy":
        import cupy

        with cupy.cuda.Device(buf.device):
            return cupy.empty(shape, buf.dtype)
    raise InvalidArgumentError(f"cannot allocate a result like a {buf.kind} buffer; pass out=",
                               rank=rank, op=op)

