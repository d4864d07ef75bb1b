"""Reusable buffers per communicator: allocated once, grown when needed, never shrunk.

The allreduce algorithms need temporary space (the incoming chunk they are
about to reduce), and host staging needs pinned buffers for device data.
Allocating either per call costs page faults (or a pinned registration) on
every large collective, so each communicator keeps one buffer per named slot,
grown when a larger request arrives. The operations of one communicator run
one at a time (blocking, or in order on its progress thread), so a slot is
never used by two calls at once.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

__all__ = ["scratch"]


def _aligned(nbytes: int) -> np.ndarray:
    # 64-byte aligned so that NumPy's vector loops run at full speed
    raw = np.empty(nbytes + 64, np.uint8)
    skip = -raw.ctypes.data % 64
    return raw[skip:skip + nbytes]


def scratch(comm: Any, count: int, dtype: np.dtype, slot: str,
            alloc: Callable[[int], np.ndarray] = _aligned) -> np.ndarray:
    """A reusable array of ``count`` elements of ``dtype`` owned by ``comm`` under ``slot``.

    ``alloc(nbytes)`` makes the uint8 backing store when the slot is new or too
    small (staging passes a pinned-memory allocator).
    """
    pool: dict[str, np.ndarray] | None = getattr(comm, "_hpcdl_scratch", None)
    if pool is None:
        pool = comm._hpcdl_scratch = {}
    nbytes = count * dtype.itemsize
    raw = pool.get(slot)
    if raw is None or raw.nbytes < nbytes:
        raw = pool[slot] = alloc(max(nbytes, 1))
    return raw[:nbytes].view(dtype)
