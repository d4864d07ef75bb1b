"""``HPCDL_DEBUG=1``: check that all ranks called a collective with matching arguments.

Without it, mismatched calls hang or corrupt data silently. With it, every
collective first allgathers a small signature (operation, shape, dtype, op,
root, ...) and every rank raises :class:`~hpcdl.errors.MismatchError` naming
the ranks that differ from the majority (every group when there is none).
It costs one small allgather per call.
"""

from __future__ import annotations

import os
from typing import Any

from ..comm.base import Communicator
from ..context import get_context, is_initialized
from ..errors import InvalidArgumentError, MismatchError

__all__ = ["check_same_call", "debug_enabled", "set_debug"]


def _is_on(value: str | None) -> bool:
    return value not in (None, "", "0")


# Read on every collective, so it is a module flag: os.environ.get costs ~1 us, a
# third of a 4 KiB allreduce. Like NCCL_DEBUG or TORCH_DISTRIBUTED_DEBUG, the
# variable is read when hpcdl starts (import and init()); set_debug() switches it
# while the job runs.
_enabled = _is_on(os.environ.get("HPCDL_DEBUG"))


def set_debug(on: bool | None = None) -> bool:
    """Switch the cross-rank check on or off for the collectives that follow; ``None``
    reads ``HPCDL_DEBUG`` again. Call it on every rank at the same point, as a
    collective: a rank that checks while another does not waits in the check's
    allgather. Returns the new setting."""
    global _enabled
    if on is not None and not isinstance(on, bool):
        ctx = get_context() if is_initialized() else None
        raise InvalidArgumentError(f"on={on!r}: use True, False or None", op="set_debug",
                                   rank=ctx.rank if ctx else None, size=ctx.size if ctx else None)
    _enabled = _is_on(os.environ.get("HPCDL_DEBUG")) if on is None else on
    return _enabled


def debug_enabled() -> bool:
    return _enabled


def _fmt(sig: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sig.items())


def _span(ranks: list[int]) -> str:
    """``[0, 2, 3, 4, 7]`` -> ``"0, 2-4, 7"``: short even at thousands of ranks."""
    parts: list[str] = []
    start = prev = ranks[0]
    for r in [*ranks[1:], None]:
        if r is not None and r == prev + 1:
            prev = r
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if r is not None:
            start = prev = r
    return ", ".join(parts)


def _ranks(ranks: list[int]) -> str:
    return f"rank {ranks[0]} has" if len(ranks) == 1 else f"ranks {_span(ranks)} have"


def check_same_call(comm: Communicator, op_name: str, **signature: Any) -> None:
    sigs = comm.allgather_object(signature)
    groups: list[tuple[dict[str, Any], list[int]]] = []  # distinct signatures, in rank order
    for r, s in enumerate(sigs):
        for sig, ranks in groups:
            if sig == s:
                ranks.append(r)
                break
        else:
            groups.append((s, [r]))
    if len(groups) == 1:
        return
    # Name the odd ones out: with a strict majority the others are the suspects
    # (rank 0 may be the wrong one); without one, list every group.
    groups.sort(key=lambda g: -len(g[1]))
    if len(groups[0][1]) > len(groups[1][1]):
        odd = sorted(groups[1:], key=lambda g: g[1][0])
        diffs = "; ".join(f"{_ranks(ranks)} {_fmt(sig)}" for sig, ranks in odd)
        text = f"{diffs}; the other ranks ({_span(groups[0][1])}) have {_fmt(groups[0][0])}"
    else:
        text = "; ".join(f"{_ranks(ranks)} {_fmt(sig)}"
                         for sig, ranks in sorted(groups, key=lambda g: g[1][0]))
    raise MismatchError(f"arguments differ across ranks: {text}", rank=comm.rank,
                        size=comm.size, op=op_name)
