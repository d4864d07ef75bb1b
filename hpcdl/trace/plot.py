"""A merged trace as a picture: one row per (rank, lane), a bar per event."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_trace"]

_COLOURS = {"collective": "tab:blue", "queue": "tab:gray", "mpi": "tab:orange",
            "staging": "tab:brown", "compression": "tab:pink", "optimizer": "tab:green",
            "user": "tab:purple"}


def plot_trace(trace: dict[str, Any], path: Path, window_ms: float = 0.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"]
             if e.get("ph") == "M" and e["name"] == "thread_name"}
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    if not events:
        raise ValueError("the trace holds no events")
    end = max(e["ts"] + e["dur"] for e in events)
    start = end - window_ms * 1000 if window_ms > 0 else min(e["ts"] for e in events)
    rows = sorted({(e["pid"], e["tid"]) for e in events})
    fig, ax = plt.subplots(figsize=(13, 0.32 * len(rows) + 1.5))
    for y, key in enumerate(rows):
        lane = names.get(key, str(key[1]))
        bars = [((e["ts"] - start) / 1000, max(e["dur"] / 1000, 1e-3)) for e in events
                if (e["pid"], e["tid"]) == key and e["ts"] + e["dur"] >= start]
        ax.broken_barh(bars, (y - 0.4, 0.8), color=_COLOURS.get(lane, "tab:olive"))
    ax.set_yticks(range(len(rows)), [f"rank {p} {names.get((p, t), t)}" for p, t in rows],
                  fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, (end - start) / 1000)
    ax.set(xlabel="time (ms, rank 0's clock)", title="hpcdl trace")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
