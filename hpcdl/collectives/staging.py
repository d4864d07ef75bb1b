"""Where device buffers meet host memory.

:func:`staged` runs a host-side step ``work(host_array)`` over the elements of
an output buffer:

* host buffers: ``work`` runs on the buffer itself (zero copy);
* device buffers on a CUDA-aware MPI, when the caller offers a ``direct`` step:
  wait for the producer's ready event (recorded when the operation was
  enqueued, see device.py) and MPI gets the device pointer;
* other device buffers: wait for that event, copy into a host staging buffer that is
  allocated once per communicator (pinned on a real GPU) and reused, run
  ``work``, copy back;
* with ``chunked=True`` (the caller's ``work`` is correct on any piece of the
  buffer on its own, like an allreduce, and every rank cuts identically):
  :func:`staged_pipeline` cuts the message into chunks of
  ``HPCDL_STAGING_CHUNK_BYTES`` (default 4 MiB) that flow through a few pinned
  slots so that the device-to-host copy of chunk i+1, ``work`` (MPI) on chunk i
  and the host-to-device copy of chunk i-1 overlap.
"""

from __future__ import annotations

from typing import Any, Callable

import os

import numpy as np

from ..buffers import Buffer
from ..comm.base import Communicator
from ..device import DeviceBackend, backend_for, host_backend
from ..errors import InvalidArgumentError
from .scratch import scratch

__all__ = ["staged", "staged_pipeline", "staging_buffer", "read_input_into", "host_copy",
           "staging_chunk_bytes"]

DEFAULT_CHUNK_BYTES = 4 << 20
PIPELINE_SLOTS = 3  # chunk i+1 and i+2 copy in while chunk i is reduced


def staging_buffer(comm: Communicator, count: int, dtype: np.dtype, slot: str = "main") -> np.ndarray:
    """A reusable host buffer of ``count`` elements (pinned on a real GPU), one per (comm, slot)."""
    return scratch(comm, count, dtype, f"staging:{slot}", alloc=_pinned)


def _pinned(nbytes: int) -> np.ndarray:
    return host_backend().pinned_empty(nbytes, np.dtype(np.uint8))


def _sync(*bufs: Buffer) -> None:
    for b in bufs:
        if b.sync is not None:
            b.sync()


def read_input_into(comm: Communicator, inp: Buffer, host: np.ndarray, start: int) -> None:
    """Copy all of ``inp`` into ``host[start:start + inp.size]``."""
    dst = host[start:start + inp.size]
    if inp.is_device:
        _sync(inp)
        backend_for(inp).to_host(inp, dst)
    else:
        np.copyto(dst, inp.host)


def host_copy(comm: Communicator, inp: Buffer) -> np.ndarray:
    """``inp``'s elements in host memory (the buffer itself when it is already there)."""
    if not inp.is_device:
        return inp.host
    host = staging_buffer(comm, inp.size, inp.dtype, slot="input")
    read_input_into(comm, inp, host, 0)
    return host


def staging_chunk_bytes() -> int:
    """The pipeline's chunk size: ``HPCDL_STAGING_CHUNK_BYTES`` or 4 MiB."""
    raw = os.environ.get("HPCDL_STAGING_CHUNK_BYTES")
    if raw is None:
        return DEFAULT_CHUNK_BYTES
    if not raw.isdigit() or int(raw) < 1:
        raise InvalidArgumentError(f"HPCDL_STAGING_CHUNK_BYTES={raw!r}; use a positive integer",
                                   op="staging")
    return int(raw)


def _streams(comm: Communicator, backend: DeviceBackend, device: int) -> tuple[Any, Any]:
    """The (device-to-host, host-to-device) copy streams of ``device``, made once per comm."""
    pool: dict[Any, tuple[Any, Any]] | None = getattr(comm, "_staging_streams", None)
    if pool is None:
        pool = {}
        comm._staging_streams = pool  # type: ignore[attr-defined]
    key = (backend.name, device)
    if key not in pool:
        pool[key] = (backend.new_stream(device), backend.new_stream(device))
    return pool[key]


def staged_pipeline(comm: Communicator, inp: Buffer, out: Buffer,
                    work: Callable[[np.ndarray], None], *, chunk_bytes: int | None = None,
                    copy_in: bool = True, backend: DeviceBackend | None = None,
                    slots: int = PIPELINE_SLOTS) -> None:
    """``work`` on each chunk of device buffer ``out`` (filled from ``inp``), overlapped.

    Chunk ``i`` lives in pinned slot ``i % slots``. Its device-to-host copy is
    queued on the D2H stream behind an event saying the host-to-device copy of
    chunk ``i - slots`` (the slot's previous tenant) has finished; the host
    waits only for the chunk it is about to hand to ``work``. All ranks cut the
    buffer identically, so each chunk is an independent collective.
    """
    backend = backend or backend_for(out)
    n, dtype = out.size, out.dtype
    ce = max(1, (chunk_bytes or staging_chunk_bytes()) // dtype.itemsize)
    nchunks = -(-n // ce)
    nslots = max(1, min(slots, nchunks))
    hosts = [staging_buffer(comm, min(ce, n), dtype, slot=f"pipe{j}") for j in range(nslots)]
    d2h, h2d = _streams(comm, backend, out.device or 0)
    d2h_done: list[Any] = [None] * nchunks
    h2d_done: list[Any] = [None] * nchunks

    def piece(i: int) -> np.ndarray:
        return hosts[i % nslots][:min(ce, n - i * ce)]

    def start_d2h(i: int) -> None:
        if i >= nslots:
            backend.stream_wait(d2h, h2d_done[i - nslots])
        backend.to_host_async(inp, piece(i), i * ce, d2h)
        d2h_done[i] = backend.record(d2h)

    if copy_in:
        for i in range(nslots):
            start_d2h(i)
    for i in range(nchunks):
        if copy_in:
            backend.event_wait(d2h_done[i])
        elif i >= nslots:
            backend.event_wait(h2d_done[i - nslots])  # the slot's last H2D has read it
        host = piece(i)
        work(host)
        backend.from_host_async(host, out, i * ce, h2d)
        h2d_done[i] = backend.record(h2d)
        if copy_in and i + nslots < nchunks:
            start_d2h(i + nslots)
    backend.event_wait(h2d_done[-1])  # one in-order stream: every chunk is back


def staged(comm: Communicator, inp: Buffer, out: Buffer, work: Callable[[np.ndarray], None],
           *, direct: Callable[[], Any] | None = None, copy_in: bool = True,
           prepare: Callable[[np.ndarray], None] | None = None, chunked: bool = False) -> None:
    """Run ``work`` over ``out``'s elements, first filled from ``inp`` when ``copy_in``.

    ``chunked=True`` promises that ``work`` may run on consecutive pieces of the
    buffer independently (identically cut on every rank): device buffers then
    go through :func:`staged_pipeline`.
    """
    if not out.is_device:
        host = out.host
        if copy_in and inp is not out:
            np.copyto(host, inp.host)
        if prepare is not None:
            prepare(host)
        work(host)
        return
    _sync(inp, out)
    backend = backend_for(out)
    if direct is not None and getattr(comm, "cuda_aware", False):
        if copy_in and inp is not out:
            backend.device_copy(inp, out)
        direct()
        return
    if chunked and prepare is None and out.nbytes > staging_chunk_bytes():
        staged_pipeline(comm, inp, out, work, copy_in=copy_in, backend=backend)
        return
    host = staging_buffer(comm, out.size, out.dtype)
    if copy_in:
        backend.to_host(inp, host)
    if prepare is not None:
        prepare(host)
    work(host)
    backend.from_host(host, out)
