"""Where device buffers meet host memory.

:func:`staged` runs a host-side step ``work(host_array)`` over the elements of
an output buffer:

* host buffers: ``work`` runs on the buffer itself (zero copy);
* device buffers on a CUDA-aware MPI, when the caller offers a ``direct`` step:
  the producer's stream is synchronised and MPI gets the device pointer;
* other device buffers: synchronise, copy into a host staging buffer that is
  allocated once per communicator (pinned on a real GPU) and reused, run
  ``work``, copy back.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..buffers import Buffer
from ..comm.base import Communicator
from ..device import backend_for

__all__ = ["staged", "staging_buffer", "read_input_into", "host_copy"]


def staging_buffer(comm: Communicator, count: int, dtype: np.dtype, slot: str = "main") -> np.ndarray:
    """A reusable host buffer of ``count`` elements, grown on demand, one per (comm, slot)."""
    pool: dict[str, np.ndarray] | None = getattr(comm, "_staging", None)
    if pool is None:
        pool = {}
        comm._staging = pool  # type: ignore[attr-defined]
    nbytes = count * dtype.itemsize
    raw = pool.get(slot)
    if raw is None or raw.nbytes < nbytes:
        raw = backend_for(0).pinned_empty(max(nbytes, 1), np.dtype(np.uint8))
        pool[slot] = raw
    return raw[:nbytes].view(dtype)


def _sync(*bufs: Buffer) -> None:
    for b in bufs:
        if b.sync is not None:
            b.sync()


def read_input_into(comm: Communicator, inp: Buffer, host: np.ndarray, start: int) -> None:
    """Copy all of ``inp`` into ``host[start:start + inp.size]``."""
    dst = host[start:start + inp.size]
    if inp.is_device:
        _sync(inp)
        backend_for(inp.ptr).to_host(inp, dst)
    else:
        np.copyto(dst, inp.host)


def host_copy(comm: Communicator, inp: Buffer) -> np.ndarray:
    """``inp``'s elements in host memory (the buffer itself when it is already there)."""
    if not inp.is_device:
        return inp.host
    host = staging_buffer(comm, inp.size, inp.dtype, slot="input")
    read_input_into(comm, inp, host, 0)
    return host


def staged(comm: Communicator, inp: Buffer, out: Buffer, work: Callable[[np.ndarray], None],
           *, direct: Callable[[], Any] | None = None, copy_in: bool = True,
           prepare: Callable[[np.ndarray], None] | None = None) -> None:
    """Run ``work`` over ``out``'s elements, first filled from ``inp`` when ``copy_in``."""
    if not out.is_device:
        host = out.host
        if copy_in and inp is not out:
            np.copyto(host, inp.host)
        if prepare is not None:
            prepare(host)
        work(host)
        return
    _sync(inp, out)
    backend = backend_for(out.ptr)
    if direct is not None and getattr(comm, "cuda_aware", False):
        if copy_in and inp is not out:
            backend.device_copy(inp, out)
        direct()
        return
    host = staging_buffer(comm, out.size, out.dtype)
    if copy_in:
        backend.to_host(inp, host)
    if prepare is not None:
        prepare(host)
    work(host)
    backend.from_host(host, out)
