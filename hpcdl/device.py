"""Moving bytes between device buffers and host memory.

Two backends behind one small protocol:

* :class:`CupyDevice` when a CUDA GPU is usable (``cupy.is_available()``);
* :class:`HostEmulation` when none is. Without a GPU no device memory exists,
  so a pointer from ``__cuda_array_interface__`` can only be host memory: the
  "device" copies become ``memmove``. This is what lets the GPU code paths
  (stream sync, staging, chunking) run and be tested on a CPU-only machine,
  with fake arrays that expose ``__cuda_array_interface__`` over NumPy memory.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, Protocol

import numpy as np

from .buffers import Buffer, host_view

__all__ = ["DeviceBackend", "HostEmulation", "CupyDevice", "backend_for", "gpu_count"]


class DeviceBackend(Protocol):
    name: str

    def device_of(self, ptr: int) -> int: ...
    def stream_sync(self, stream: int) -> Callable[[], None]: ...
    def to_host(self, buf: Buffer, dst: np.ndarray, start: int = 0) -> None: ...
    def from_host(self, src: np.ndarray, buf: Buffer, start: int = 0) -> None: ...
    def pinned_empty(self, count: int, dtype: np.dtype) -> np.ndarray: ...
    def device_copy(self, src: Buffer, dst: Buffer) -> None: ...

    # Asynchronous copies for the pipelined staging (collectives/staging.py):
    # streams and events are opaque handles of the backend.
    def new_stream(self, device: int) -> Any: ...
    def to_host_async(self, buf: Buffer, dst: np.ndarray, start: int, stream: Any) -> None: ...
    def from_host_async(self, src: np.ndarray, buf: Buffer, start: int, stream: Any) -> None: ...
    def record(self, stream: Any) -> Any: ...
    def event_wait(self, event: Any) -> None: ...
    def stream_wait(self, stream: Any, event: Any) -> None: ...


class HostEmulation:
    """No GPU present: device pointers are host memory (fake CUDA arrays in tests)."""

    name = "host-emulation"

    def device_of(self, ptr: int) -> int:
        return 0

    def stream_sync(self, stream: int) -> Callable[[], None]:
        return lambda: None

    def _view(self, buf: Buffer) -> np.ndarray:
        return host_view(buf.ptr, buf.nbytes, buf.dtype)

    def to_host(self, buf: Buffer, dst: np.ndarray, start: int = 0) -> None:
        """Copy elements ``[start, start + dst.size)`` of ``buf`` into ``dst``."""
        np.copyto(dst, self._view(buf)[start:start + dst.size])

    def from_host(self, src: np.ndarray, buf: Buffer, start: int = 0) -> None:
        """Copy ``src`` into elements ``[start, start + src.size)`` of ``buf``."""
        np.copyto(self._view(buf)[start:start + src.size], src)

    def pinned_empty(self, count: int, dtype: np.dtype) -> np.ndarray:
        return np.empty(count, dtype)

    def device_copy(self, src: Buffer, dst: Buffer) -> None:
        np.copyto(self._view(dst), self._view(src))

    # No GPU, no asynchrony: the "async" copies complete before they return.
    def new_stream(self, device: int) -> Any:
        return None

    def to_host_async(self, buf: Buffer, dst: np.ndarray, start: int, stream: Any) -> None:
        self.to_host(buf, dst, start)

    def from_host_async(self, src: np.ndarray, buf: Buffer, start: int, stream: Any) -> None:
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

    def stream_sync(self, stream: int) -> Callable[[], None]:
        if stream in (1, 2):  # legacy / per-thread default stream handles
            return self.rt.deviceSynchronize
        ext = self.cupy.cuda.ExternalStream(stream)
        return ext.synchronize

    def to_host(self, buf: Buffer, dst: np.ndarray, start: int = 0) -> None:
        off = start * buf.dtype.itemsize
        self.rt.memcpy(dst.ctypes.data, buf.ptr + off, dst.nbytes, self.rt.memcpyDefault)

    def from_host(self, src: np.ndarray, buf: Buffer, start: int = 0) -> None:
        off = start * buf.dtype.itemsize
        self.rt.memcpy(buf.ptr + off, src.ctypes.data, src.nbytes, self.rt.memcpyDefault)

    def pinned_empty(self, count: int, dtype: np.dtype) -> np.ndarray:
        mem = self.cupy.cuda.alloc_pinned_memory(max(count * dtype.itemsize, 1))
        return np.frombuffer(mem, dtype=np.uint8, count=count * dtype.itemsize).view(dtype)

    def device_copy(self, src: Buffer, dst: Buffer) -> None:
        self.rt.memcpy(dst.ptr, src.ptr, src.nbytes, self.rt.memcpyDefault)

    def new_stream(self, device: int) -> Any:
        # non-blocking: the copies must not serialise with the legacy default stream
        with self.cupy.cuda.Device(device):
            return _DeviceStream(self.cupy.cuda.Stream(non_blocking=True), device)

    def to_host_async(self, buf: Buffer, dst: np.ndarray, start: int, stream: Any) -> None:
        off = start * buf.dtype.itemsize
        self.rt.memcpyAsync(dst.ctypes.data, buf.ptr + off, dst.nbytes, self.rt.memcpyDefault,
                            stream.stream.ptr)

    def from_host_async(self, src: np.ndarray, buf: Buffer, start: int, stream: Any) -> None:
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


@functools.lru_cache(maxsize=1)
def gpu_count() -> int:
    """CUDA devices this process can use; 0 without importing anything on a GPU-less host."""
    import glob

    if not glob.glob("/dev/nvidia[0-9]*") and "torch" not in sys.modules:
        return 0
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
def _backend() -> DeviceBackend:
    if gpu_count() > 0:
        return CupyDevice()
    return HostEmulation()


def backend_for(ptr: int) -> DeviceBackend:
    return _backend()
