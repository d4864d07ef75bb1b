"""``HPCDL_DEBUG=1``: check that all ranks called a collective with matching arguments.

Without it, mismatched calls hang or corrupt data silently. With it, every
collective first allgathers a small signature (operation, shape, dtype, op,
root, ...) and every rank raises :class:`~hpcdl.errors.MismatchError` naming
the ranks that differ from the majority (every group when there is none).
It costs one small allgather per call.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ..comm.base import Communicator
from ..errors import MismatchError

__all__ = ["debug_enabled", "check_same_call"]


def _is_on(value: str | bytes | None) -> bool:
    return value not in (None, "", "0", b"", b"0")


# Read on every collective, so it must be cheap: os.environ.get costs ~1 us, a
# third of a 4 KiB allreduce. The flag is read once here and then kept current
# from the audit events (PEP 578) that os.putenv/os.unsetenv raise, which every
# write through os.environ (monkeypatch too) goes through. The event comes before
# os.environ's own dict is updated, so the new value is taken from its arguments.
_enabled = _is_on(os.environ.get("HPCDL_DEBUG"))
_KEYS = ("HPCDL_DEBUG", b"HPCDL_DEBUG")


def _on_audit(event: str, args: tuple) -> None:
    global _enabled
    if event == "os.putenv" and args[0] in _KEYS:
        _enabled = _is_on(args[1])
    elif event == "os.unsetenv" and args[0] in _KEYS:
        _enabled = False


sys.addaudithook(_on_audit)


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
