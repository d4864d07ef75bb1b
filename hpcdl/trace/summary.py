"""``hpcdl trace summary trace.json``: time per rank and phase, and who kept the others waiting."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

__all__ = ["busy_time", "lane_table", "stragglers", "format_summary"]


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals (overlaps counted once)."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def _lanes(trace: dict[str, Any]) -> dict[tuple[int, int], str]:
    return {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"]
            if e.get("ph") == "M" and e["name"] == "thread_name"}


def lane_table(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (rank, lane): busy microseconds and share of the rank's traced wall time."""
    names = _lanes(trace)
    spans: dict[tuple[int, str], list[tuple[float, float]]] = defaultdict(list)
    wall: dict[int, list[float]] = {}
    for e in trace["traceEvents"]:
        if e.get("ph") != "X":
            continue
        a, b = e["ts"], e["ts"] + e["dur"]
        spans[(e["pid"], names.get((e["pid"], e["tid"]), str(e["tid"])))].append((a, b))
        lo_hi = wall.setdefault(e["pid"], [a, b])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], a), max(lo_hi[1], b)
    rows = []
    for (rank, lane), iv in sorted(spans.items()):
        total = wall[rank][1] - wall[rank][0]
        busy = busy_time(iv)
        rows.append({"rank": rank, "lane": lane, "events": len(iv), "busy_us": busy,
                     "share": busy / total if total > 0 else 0.0})
    return rows


def stragglers(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """Per collective name: how often each rank arrived last, and the wait it caused.

    Instances are matched across ranks by (communicator, name, sequence number);
    the rank whose start is latest is the one the others waited for, and the
    wait is the spread of the start times.
    """
    names = _lanes(trace)
    calls: dict[tuple, list[tuple[float, int]]] = defaultdict(list)
    for e in trace["traceEvents"]:
        if e.get("ph") == "X" and names.get((e["pid"], e["tid"])) == "collective":
            a = e.get("args", {})
            calls[(a.get("comm"), e["name"], a.get("seq"))].append((e["ts"], e["pid"]))
    per_op: dict[str, dict[str, Any]] = {}
    for (_, name, _), starts in calls.items():
        if len(starts) < 2:
            continue
        first, last = min(starts), max(starts)
        s = per_op.setdefault(name, {"op": name, "calls": 0, "last": defaultdict(int),
                                     "wait_us": defaultdict(float)})
        s["calls"] += 1
        s["last"][last[1]] += 1
        s["wait_us"][last[1]] += last[0] - first[0]
    out = []
    for s in per_op.values():
        worst = max(s["wait_us"], key=s["wait_us"].get)
        out.append({"op": s["op"], "calls": s["calls"], "slowest_rank": worst,
                    "times_last": s["last"][worst], "wait_caused_us": s["wait_us"][worst],
                    "last_by_rank": dict(s["last"])})
    return sorted(out, key=lambda r: -r["wait_caused_us"])


def format_summary(trace: dict[str, Any]) -> str:
    lines = ["time per rank and phase (busy = union of the phase's events; share of the "
             "rank's traced wall time)",
             f"{'rank':>4} {'phase':>12} {'events':>8} {'busy(ms)':>10} {'share':>7}"]
    for r in lane_table(trace):
        lines.append(f"{r['rank']:4d} {r['lane']:>12} {r['events']:8d} "
                     f"{r['busy_us'] / 1000:10.2f} {100 * r['share']:6.1f}%")
    lines += ["", "slowest rank per collective (the last to arrive: the others waited for it)",
              f"{'collective':>16} {'calls':>6} {'slowest':>8} {'times last':>11} "
              f"{'wait caused(ms)':>16}  last arrivals by rank"]
    for s in stragglers(trace):
        lines.append(f"{s['op']:>16} {s['calls']:6d} {'rank ' + str(s['slowest_rank']):>8} "
                     f"{s['times_last']:11d} {s['wait_caused_us'] / 1000:16.2f}  "
                     + ", ".join(f"{r}: {n}" for r, n in sorted(s["last_by_rank"].items())))
    return "\n".join(lines)
