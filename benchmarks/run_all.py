"""``make bench``: every benchmark, at 2 and 4 ranks, with tables, JSON and plots.

    python benchmarks/run_all.py --out out/bench [--only allreduce] [--ranks 2,4]

Each entry of :data:`BENCHMARKS` is a script run under ``hpcdl launch -n N``
for every rank count, writing ``OUT/<name>_n<N>.json``; its tables stream to
the terminal as it runs; afterwards its ``plot`` (if any) turns the JSON files
into a PNG. To add a benchmark, append a :class:`Benchmark`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from plot import plot_busbw  # noqa: E402


@dataclass
class Benchmark:
    name: str                                   # also the JSON/PNG file prefix
    script: str                                 # path relative to benchmarks/
    args: list[str] = field(default_factory=list)
    ranks: list[int] | None = None              # None: the --ranks given to run_all
    plot: Callable[[list[dict[str, Any]], str], None] | None = None
    timeout_s: int = 900


BENCHMARKS: list[Benchmark] = [
    Benchmark("allreduce", "allreduce.py", plot=lambda rows, out: plot_busbw(rows, out)),
    # samples/s of hpcdl's DistributedOptimizer vs DDP over gloo, same job
    Benchmark("train_throughput", "train_throughput.py"),
]


def run(bench: Benchmark, ranks: list[int], out: Path) -> list[Path]:
    hpcdl = Path(sys.executable).with_name("hpcdl")
    launcher = [str(hpcdl)] if hpcdl.exists() else [sys.executable, "-m", "hpcdl"]
    written = []
    for n in bench.ranks or ranks:
        path = out / f"{bench.name}_n{n}.json"
        cmd = [*launcher, "launch", "-n", str(n), "--", "python", str(HERE / bench.script),
               *bench.args, "--json", str(path)]
        print(f"\n## {bench.name}, {n} ranks: {' '.join(cmd)}", flush=True)
        start = time.time()
        rc = subprocess.call(cmd, timeout=bench.timeout_s)
        if rc:
            raise SystemExit(f"run_all: {bench.name} at {n} ranks failed (exit {rc})")
        print(f"## {bench.name}, {n} ranks: {time.time() - start:.0f} s", flush=True)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/bench", help="directory for JSON and PNG files")
    p.add_argument("--ranks", default="2,4", help="rank counts, comma separated")
    p.add_argument("--only", default="", help="run only these benchmarks (comma separated)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ranks = [int(r) for r in args.ranks.split(",")]
    chosen = [b for b in BENCHMARKS if not args.only or b.name in args.only.split(",")]
    for bench in chosen:
        files = run(bench, ranks, out)
        if bench.plot is not None:
            rows = [r for f in files for r in json.loads(f.read_text())]
            png = out / f"{bench.name}_busbw.png"
            bench.plot(rows, str(png))
            print(f"## wrote {png}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
