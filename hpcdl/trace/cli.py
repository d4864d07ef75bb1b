"""``hpcdl trace merge DIR -o trace.json`` | ``summary trace.json`` | ``plot trace.json -o x.png``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hpcdl trace", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("merge", help="merge DIR/rank*.jsonl into one Chrome trace")
    m.add_argument("directory")
    m.add_argument("-o", "--out", default="trace.json")
    s = sub.add_parser("summary", help="time per rank and phase; slowest rank per collective")
    s.add_argument("trace")
    g = sub.add_parser("plot", help="render the merged trace as a PNG timeline")
    g.add_argument("trace")
    g.add_argument("-o", "--out", default="trace.png")
    g.add_argument("--window-ms", type=float, default=0.0,
                   help="show only the last this many ms (0: everything)")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "merge":
            from .merge import merge

            trace = merge(args.directory)
            Path(args.out).write_text(json.dumps(trace))
            n = sum(e.get("ph") == "X" for e in trace["traceEvents"])
            print(f"wrote {args.out}: {n} events from {trace['otherData']['ranks']} rank(s); "
                  "open it in https://ui.perfetto.dev or chrome://tracing")
        elif args.command == "summary":
            from .summary import format_summary

            print(format_summary(json.loads(Path(args.trace).read_text())))
        else:
            from .plot import plot_trace

            plot_trace(json.loads(Path(args.trace).read_text()), Path(args.out), args.window_ms)
            print(f"wrote {args.out}")
    except (OSError, ValueError, KeyError) as exc:
        print(f"hpcdl trace {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0
