"""Plot benchmark JSON rows: busbw against message size, one line per implementation.

    python benchmarks/plot.py out/bench/allreduce_n2.json out/bench/allreduce_n4.json \
        --out out/bench/allreduce_busbw.png

One panel per rank count; one line per (impl, algorithm), e.g. ``hpcdl auto``,
``hpcdl ring``, ``mpi native``, ``gloo``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["plot_busbw", "main"]


def _label(size: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size // scale} {unit}"
    return f"{size} B"


def plot_busbw(rows: list[dict[str, Any]], out: str, title: str = "allreduce") -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on compute nodes
    import matplotlib.pyplot as plt

    ranks = sorted({r["ranks"] for r in rows})
    fig, axes = plt.subplots(1, len(ranks), figsize=(6 * len(ranks), 4.5), squeeze=False)
    for ax, n in zip(axes[0], ranks):
        lines: dict[str, list[tuple[int, float]]] = {}
        for r in rows:
            if r["ranks"] == n:
                name = r["impl"] if r["impl"] == r["algorithm"] else f"{r['impl']} {r['algorithm']}"
                lines.setdefault(name, []).append((r["bytes"], r["busbw_GBps"]))
        for name, points in sorted(lines.items()):
            points.sort()
            style = "-o" if name.startswith("hpcdl") else "--s"
            ax.plot([p[0] for p in points], [p[1] for p in points], style, ms=3, label=name)
        sizes = sorted({r["bytes"] for r in rows if r["ranks"] == n})
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes[::2], [_label(s) for s in sizes[::2]], rotation=45)
        ax.set_xlabel("message size")
        ax.set_ylabel("busbw (GB/s)")
        ax.set_title(f"{title}, {n} ranks, {rows[0]['dtype']}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", nargs="+", help="row files written by a benchmark's --json")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--title", default="allreduce")
    args = p.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for path in args.json:
        with open(path) as f:
            rows += json.load(f)
    plot_busbw(rows, args.out, args.title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
