"""``HPCDL_DEBUG=1``: check that all ranks called a collective with matching arguments.

Without it, mismatched calls hang or corrupt data silently. With it, every
collective first allgathers a small signature (operation, shape, dtype, op,
root, ...) and every rank raises :class:`~hpcdl.errors.MismatchError` naming
the ranks that differ from rank 0. It costs one small allgather per call.
"""

from __future__ import annotations

import os
from typing import Any

from ..comm.base import Communicator
from ..errors import MismatchError

__all__ = ["debug_enabled", "check_same_call"]


def debug_enabled() -> bool:
    return os.environ.get("HPCDL_DEBUG", "0") not in ("", "0")


def _fmt(sig: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sig.items())


def check_same_call(comm: Communicator, op_name: str, **signature: Any) -> None:
    sigs = comm.allgather_object(signature)
    ref = sigs[0]
    bad = [r for r, s in enumerate(sigs) if s != ref]
    if bad:
        diffs = "; ".join(f"rank {r} has {_fmt(sigs[r])}" for r in bad)
        raise MismatchError(f"arguments do not match across ranks: rank 0 has {_fmt(ref)}; "
                            f"{diffs}", rank=comm.rank, size=comm.size, op=op_name)
