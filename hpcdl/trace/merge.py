"""``hpcdl trace merge DIR -o trace.json``: every rank's file into one Chrome trace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import LANES

__all__ = ["read_rank", "merge"]


def read_rank(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(meta, events) of one rank's file. A last line cut short (the rank was killed
    while writing) is dropped; anything else malformed is an error naming the line."""
    lines = path.read_text().splitlines()
    if not lines:
        raise ValueError(f"{path}: empty (the rank never started tracing)")
    meta = json.loads(lines[0]).get("meta")
    if not isinstance(meta, dict):
        raise ValueError(f"{path}:1: not an hpcdl trace (no 'meta' line)")
    events: list[dict[str, Any]] = []
    for i, line in enumerate(lines[1:], start=2):
        try:
            row = json.loads(line)
        except ValueError:
            if i == len(lines):
                break  # a partial final line
            raise ValueError(f"{path}:{i}: not JSON") from None
        if isinstance(row, dict):          # one event per line
            events.append(row)
        elif isinstance(row, list):        # one flush per line (recorder.py)
            try:
                events.extend({"name": n, "lane": lane, "t": t, "d": d, "args": a}
                              for n, lane, t, d, a in row)
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{i}: not a list of [name, lane, t, d, args] "
                                 "rows") from None
        else:
            raise ValueError(f"{path}:{i}: neither an event nor a list of events")
    return meta, events


def merge(directory: str | Path) -> dict[str, Any]:
    files = sorted(Path(directory).glob("rank*.jsonl"), key=lambda p: int(p.stem[4:]))
    if not files:
        raise ValueError(f"{directory}: no rank*.jsonl files (was HPCDL_TRACE set to it?)")
    ranks = [read_rank(f) for f in files]
    base = min((e["t"] + meta["offset_ns"] for meta, events in ranks for e in events),
               default=0)
    lanes = list(LANES)
    out: list[dict[str, Any]] = []
    for meta, events in ranks:
        r = meta["rank"]
        out.append({"name": "process_name", "ph": "M", "pid": r,
                    "args": {"name": f"rank {r} ({meta['host']}, pid {meta['pid']})"}})
        out.append({"name": "process_sort_index", "ph": "M", "pid": r, "args": {"sort_index": r}})
        for e in events:
            if e["lane"] not in lanes:
                lanes.append(e["lane"])
            out.append({"name": e["name"], "ph": "X", "pid": r, "tid": lanes.index(e["lane"]),
                        "ts": (e["t"] + meta["offset_ns"] - base) / 1000, "dur": e["d"] / 1000,
                        "args": e.get("args", {})})
        for tid, lane in enumerate(lanes):
            out.append({"name": "thread_name", "ph": "M", "pid": r, "tid": tid,
                        "args": {"name": lane}})
    return {"traceEvents": out, "displayTimeUnit": "ms",
            "otherData": {"producer": "hpcdl trace merge", "ranks": len(ranks),
                          "clock_offsets_ns": {m["rank"]: m["offset_ns"] for m, _ in ranks},
                          "clock_error_ns": {m["rank"]: m["offset_error_ns"] for m, _ in ranks}}}
