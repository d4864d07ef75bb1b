"""Scratch buffers for the allreduce algorithms: allocated once, reused, grow-only.

An algorithm needs temporary space (the incoming chunk it is about to reduce).
Allocating it per call costs page faults on every large allreduce, so each
communicator keeps one plain host buffer per named slot, grown when a larger
request arrives and never shrunk. Slots are per communicator, and the
operations of one communicator run one at a time (blocking, or in order on its
progress thread), so a slot is never used by two calls at once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["scratch"]


def scratch(comm: Any, count: int, dtype: np.dtype, slot: str) -> np.ndarray:
    """A reusable array of ``count`` elements of ``dtype`` owned by ``comm`` under ``slot``."""
    pool: dict[str, np.ndarray] | None = getattr(comm, "_hpcdl_scratch", None)
    if pool is None:
        pool = comm._hpcdl_scratch = {}
    nbytes = count * dtype.itemsize
    raw = pool.get(slot)
    if raw is None or raw.nbytes < nbytes:
        # 64-byte aligned so that NumPy's vector loops run at full speed
        raw = np.empty(max(nbytes, 1) + 64, np.uint8)
        skip = -raw.ctypes.data % 64
        raw = pool[slot] = raw[skip:skip + max(nbytes, 1)]
    return raw[:nbytes].view(dtype)
