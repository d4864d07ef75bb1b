"""Moving bytes between device buffers and host memory.

Three backends behind one small protocol, chosen *per buffer* (:func:`backend_for`):

* :class:`TorchDevice` for torch CUDA tensors: torch alone, no CuPy needed;
* :class:`CupyDevice` for other device arrays (CuPy, ``__cuda_array_interface__``)
  when CuPy can drive a GPU;
* :class:`HostEmulation` when it cannot. Without a usable GPU no device memory
  exists, so a pointer from ``__cuda_array_interface__`` can only be host
  memory: the "device" copies become ``memmove``. This is what lets the GPU
  code paths (producer events, staging, chunking) run and be tested on a
  CPU-only machine, with fake arrays that expose ``__cuda_array_interface__``
  over NumPy memory.

Producer ordering (:func:`record_ready`): when a collective is *enqueued*, an
event is recorded on the stream that produced the buffer; the progress thread
later waits on that event only, so an async allreduce of bucket k waits for the
kernels queued before it, not for the rest of the backward pass queued after
(Horovod's ready event). A stream synchronize at run time would wait for both,
and on the legacy/per-thread default stream it would be a device-wide sync.

This module imports nothing else of hpcdl at run time (``buffers`` imports it).
"""

from __future__ import annotations

import ctypes
import functools
import sys
from typing import Any, Callable, Protocol

import numpy as np

__all__ = ["DeviceBackend", "HostEmulation", "CupyDevice", "TorchDevice", "backend_for",
           "host_backend", "gpu_count", "record_ready", "host_view"]


def host_view(ptr: int, nbytes: int, dtype: np.dtype) -> np.ndarray:
    """A NumPy view of ``nbytes`` of *host* memory at ``ptr`` (no copy)."""
    if nbytes == 0:
        return np.empty(0, dtype)
    raw = (ctypes.c_char * nbytes).from_address(ptr)
    return np.frombuffer(raw, dtype=np.uint8).view(dtype)


def record_ready(make_event: Callable[[], Any], stream: Any) -> Callable[[], None]:
    """Record an event on the producer's ``stream`` *now*; return what waits for it.

    Called when the operation is enqueued (on the caller's thread); the returned
    wait runs on the progress thread and covers exactly the work queued on
    ``stream`` before this call.
    """
    event = make_event()
    event.record(stream)
    return event.synchronize


class Buffer(Protocol):
    """What a backend reads of a buffer: the fields of :class:`hpcdl.buffers.Buffer`.

    A protocol here, not an import: ``buffers`` builds on this module (it picks a
    backend per buffer), so naming its class would close a circle."""

    obj: Any
    kind: str
    dtype: np.dtype
    nbytes: int
    is_device: bool

    @property
    def ptr(self) -> int: ...


class DeviceBackend(Protocol):
    name: str

    def ready_event(self, stream: Any, device: int) -> Callable[[], None] | None: ...
    def to_host(self, buf: "Buffer", dst: np.ndarray, start: int = 0) -> None: ...
    def from_host(self, src: np.ndarray, buf: "Buffer", start: int = 0) -> None: ...
    def pinned_empty(self, count: int, dtype: np.dtype) -> np.ndarray: ...
    def device_copy(self, src: "Buffer", dst: "Buffer") -> None: ...

    # Asynchronous copies for the pipelined staging (collectives/staging.py):
    # streams and events are opaque handles of the backend.
    def new_stream(self, device: int) -> Any: ...
    def to_host_async(self, buf: "Buffer", dst: np.ndarray, start: int, stream: Any) -> None: ...
    def from_host_async(self, src: np.ndarray, buf: "Buffer", start: int, stream: Any) -> None: ...
    def record(self, stream: Any) -> Any: ...
    def event_wait(self, event: Any) -> None: ...
    def stream_wait(self, stream: Any, event: Any) -> None: ...


class _HostEvent:
    """An event on host memory: complete as soon as it is recorded."""

    def record(self, stream: Any) -> None:
        return None

    def synchronize(self) -> None:
        return None


class HostEmulation:
    """No GPU present: device pointers are host memory (fake CUDA arrays in tests)."""

    name = "host-emulation"

    def ready_event(self, stream: Any, device: int) -> Callable[[], None]:
        # host memory has no queued work, but the event protocol runs as on a GPU
        return record_ready(_HostEvent, stream)

    def _view(self, buf: "Buffer") -> np.ndarray:
        return host_view(buf.ptr, buf.nbytes, buf.dtype)

    def to_host(self, buf: "Buffer", dst: np.ndarray, start: int = 0) -> None:
        """Copy elements ``[start, start + dst.size)`` of ``buf`` into ``dst``."""
        np.copyto(dst, self._view(buf)[start:start + dst.size])

    def from_host(self, src: np.ndarray, buf: "Buffer", start: int = 0) -> None:
        """Copy ``src`` into elements ``[start, start + src.size)`` of ``buf``."""
        np.copyto(self._view(buf)[start:start + src.size], src)

    def pinned_empty(self, count: int, dtype: np.dtype) -> np.ndarray:
        return np.empty(count, dtype)

    def device_copy(self, src: "Buffer", dst: "Buffer") -> None:
        np.copyto(self._view(dst), self._view(src))

    # No GPU, no asynchrony: the "async" copies complete before they return.
    def new_stream(self, device: int) -> Any:
        return None

    def to_host_async(self, buf: "Buffer", dst: np.ndarray, start: int, stream: Any) -> None:
        self.to_host(buf, dst, start)

    def from_host_async(self, src: np.ndarray, buf: "Buffer", start: int, stream: Any) -> None:
        self.from_host(src, buf, start)

    def record(self, stream: Any) -> Any:
        return None

    def event_wait(self, event: Any) -> None:
        return None

    def stream_wait(self, stream: Any, event: Any) -> None:
        return None


class _DeviceStream:
    """A CuPy stream and the device it belongs to (events must be made on that device)."""

    __slots__ = ("stream", "device")

    def __init__(self, stream: Any, device: int) -> None:
        self.stream = stream
        self.device = device


class CupyDevice:
    """A real GPU, driven through CuPy's runtime bindings."""

    name = "cupy"

    def __init__(self) -> None:
        import cupy

        self.cupy = cupy
        self.rt = cupy.cuda.runtime

    def device_of(self, ptr: int) -> int:
        attrs = self.rt.pointerGetAttributes(ptr)
        return int(attrs.device)

    def ready_event(self, stream: Any, device: int) -> Callable[[], None]:
        # 1 and 2 (legacy / per-thread default stream) are valid handles for an event
        # record: the wait then covers that stream's earlier work, not the whole device
        with self.cupy.cuda.Device(device):
            return record_ready(lambda: self.cupy.cuda.Event(disable_timing=True),
                                self.cupy.cuda.ExternalStream(int(stream)))

    def to_host(self, buf: "Buffer", dst: np.ndarray, start: int = 0) -> None:
        off = start * buf.dtype.itemsize
        self.rt.memcpy(dst.ctypes.data, buf.ptr + off, dst.nbytes, self.rt.memcpyDefault)

    def from_host(self, src: np.ndarray, buf: "Buffer", start: int = 0) -> None:
        off = start * buf.dtype.itemsize
        self.rt.memcpy(buf.ptr + off, src.ctypes.data, src.nbytes, self.rt.memcpyDefault)

    def pinned_empty(self, count: int, dtype: np.dtype) -> np.ndarray:
        mem = self.cupy.cuda.alloc_pinned_memory(max(count * dtype.itemsize, 1))
        return np.frombuffer(mem, dtype=np.uint8, count=count * dtype.itemsize).view(dtype)

    def device_copy(self, src: "Buffer", dst: "Buffer") -> None:
        self.rt.memcpy(dst.ptr, src.ptr, src.nbytes, self.rt.memcpyDefault)

    def new_stream(self, device: int) -> Any:
        # non-blocking: the copies must not serialise with the legacy default stream
        with self.cupy.cuda.Device(device):
            return _DeviceStream(self.cupy.cuda.Stream(non_blocking=True), device)

    def to_host_async(self, buf: "Buffer", dst: np.ndarray, start: int, stream: Any) -> None:
        off = start * buf.dtype.itemsize
        self.rt.memcpyAsync(dst.ctypes.data, buf.ptr + off, dst.nbytes, self.rt.memcpyDefault,
                            stream.stream.ptr)

    def from_host_async(self, src: np.ndarray, buf: "Buffer", start: int, stream: Any) -> None:
        off = start * buf.dtype.itemsize
        self.rt.memcpyAsync(buf.ptr + off, src.ctypes.data, src.nbytes, self.rt.memcpyDefault,
                            stream.stream.ptr)

    def record(self, stream: Any) -> Any:
        with self.cupy.cuda.Device(stream.device):
            event = self.cupy.cuda.Event(disable_timing=True)
            event.record(stream.stream)
        return event

    def event_wait(self, event: Any) -> None:
        event.synchronize()

    def stream_wait(self, stream: Any, event: Any) -> None:
        stream.stream.wait_event(event)


class TorchDevice:
    """torch CUDA tensors, driven through torch alone (CuPy is not needed for them).

    Copies go through byte views of the tensor (``Buffer.obj``), so every dtype,
    bfloat16 included, moves the same way.
    """

    name = "torch"

    def __init__(self) -> None:
        import torch

        self.torch = torch

    def _bytes(self, buf: "Buffer", start: int = 0, nbytes: int | None = None) -> Any:
        flat = buf.obj.detach().reshape(-1).view(self.torch.uint8)
        off = start * buf.dtype.itemsize
        return flat[off:off + (buf.nbytes - off if nbytes is None else nbytes)]

    def _host(self, a: np.ndarray) -> Any:
        return self.torch.from_numpy(a.reshape(-1).view(np.uint8))

    def ready_event(self, stream: Any, device: int) -> Callable[[], None]:
        return record_ready(self.torch.cuda.Event, stream)

    def to_host(self, buf: "Buffer", dst: np.ndarray, start: int = 0) -> None:
        self._host(dst).copy_(self._bytes(buf, start, dst.nbytes))

    def from_host(self, src: np.ndarray, buf: "Buffer", start: int = 0) -> None:
        self._bytes(buf, start, src.nbytes).copy_(self._host(src))

    def pinned_empty(self, count: int, dtype: np.dtype) -> np.ndarray:
        # the array's base keeps the pinned tensor alive
        t = self.torch.empty(max(count * dtype.itemsize, 1), dtype=self.torch.uint8,
                             pin_memory=True)
        return t.numpy()[:count * dtype.itemsize].view(dtype)

    def device_copy(self, src: "Buffer", dst: "Buffer") -> None:
        self._bytes(dst).copy_(self._bytes(src))

    def new_stream(self, device: int) -> Any:
        return self.torch.cuda.Stream(device=device)  # pool streams are non-blocking

    def to_host_async(self, buf: "Buffer", dst: np.ndarray, start: int, stream: Any) -> None:
        with self.torch.cuda.stream(stream):
            self._host(dst).copy_(self._bytes(buf, start, dst.nbytes), non_blocking=True)

    def from_host_async(self, src: np.ndarray, buf: "Buffer", start: int, stream: Any) -> None:
        with self.torch.cuda.stream(stream):
            self._bytes(buf, start, src.nbytes).copy_(self._host(src), non_blocking=True)

    def record(self, stream: Any) -> Any:
        event = self.torch.cuda.Event()
        event.record(stream)
        return event

    def event_wait(self, event: Any) -> None:
        event.synchronize()

    def stream_wait(self, stream: Any, event: Any) -> None:
        stream.wait_event(event)


@functools.lru_cache(maxsize=1)
def gpu_count() -> int:
    """CUDA devices this process can use (for binding ranks to GPUs at ``init``)."""
    try:
        import cupy

        if cupy.is_available():
            return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # cupy missing or broken: fall back to torch if the user has it
        pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return int(torch.cuda.device_count())
    return 0


@functools.lru_cache(maxsize=1)
def _cupy_device() -> "CupyDevice | None":
    """CuPy's backend when CuPy can drive a GPU, else None (asked once: CuPy's answer is fixed)."""
    try:
        import cupy

        return CupyDevice() if cupy.is_available() else None
    except Exception:  # noqa: BLE001 - no CuPy, or no driver: not a CuPy GPU
        return None


_TORCH: list[TorchDevice] = []
_HOST = HostEmulation()


def _torch_device() -> TorchDevice:
    if not _TORCH:
        _TORCH.append(TorchDevice())
    return _TORCH[0]


def backend_for(buf: "Buffer") -> DeviceBackend:
    """The backend that moves ``buf``'s bytes, decided from the buffer itself.

    A torch CUDA tensor is device memory whatever else is installed; another
    device array needs CuPy, and is host memory (a test's fake array) only
    when CuPy cannot drive a GPU.
    """
    if buf.kind == "torch" and buf.is_device:
        return _torch_device()
    return _cupy_device() or _HOST


def host_backend() -> DeviceBackend:
    """Who allocates pinned host memory for staging: CuPy, else torch with CUDA, else NumPy."""
    cupy_dev = _cupy_device()
    if cupy_dev is not None:
        return cupy_dev
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return _torch_device()
    return _HOST
