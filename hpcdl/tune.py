"""``hpcdl tune``: measure allreduce crossovers on this machine; write the table ``auto`` uses.

    hpcdl tune                          # launches itself at 2, 3 and 4 ranks
    hpcdl tune --ranks 2,4 --out t.json
    hpcdl launch -n 8 -- hpcdl tune     # inside a job: measures at the job's size

For every rank count, dtype class (``float``: float32 timings; ``half``:
float16) and message size (4 B to 64 MiB by powers of 4, or ``--sizes``), it
times each flat algorithm (``native``, ``chunked``, ``ring``, ``tree``; ``hierarchical``
too when the job spans several nodes), takes the fastest, and merges the
resulting ``[max_bytes, algorithm]`` rules into the JSON table at ``--out``
(default ``~/.cache/hpcdl/tuning.json``, where ``auto`` looks; see
:mod:`hpcdl.collectives.select`). A boundary between two measured sizes is
put at their geometric mean.

The table is fixed: ``auto`` follows it with ``HPCDL_TUNE=off`` (or when
``HPCDL_TUNING_FILE`` names it), for clusters that want the same choice in
every job. By default ``auto`` learns online in each job instead
(:mod:`hpcdl.collectives.online`), caching its choices per machine kind.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .atomic import atomic_write_text
from .collectives import allreduce, select
from .collectives.registry import ALLREDUCE
from .collectives.select import user_table_path, validate_table
from .ops import ReduceOp
from .runtime import init, under_launcher
from .tuning.rules import NATIVE_MARGIN, powers_of_4, rules_from_timings

__all__ = ["main", "run_at_ranks", "time_op", "rules_from_timings", "merge_rules", "powers_of_4",
           "NATIVE_MARGIN"]


def time_op(comm: Any, fn: Callable[[], Any], *, budget_s: float = 0.2, min_iters: int = 5,
            max_iters: int = 1000, warmup: int = 3) -> float:
    """Median seconds per call of the collective ``fn``, the slowest rank's time each call.

    Collective over ``comm`` (an :class:`~hpcdl.comm.mpi.MPICommunicator`): every
    rank runs the same number of iterations, chosen from the slowest rank's
    warm-up so that the loop takes about ``budget_s``.
    """
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    est = np.array([(time.perf_counter() - t0) / max(warmup, 1)])
    comm.allreduce(est, ReduceOp.MAX)
    iters = int(min(max_iters, max(min_iters, budget_s / max(float(est[0]), 1e-9))))
    times = np.empty(iters)
    comm.barrier()
    clock = time.perf_counter
    for i in range(iters):
        start = clock()
        fn()
        times[i] = clock() - start
    comm.allreduce(times, ReduceOp.MAX)
    return float(np.median(times))


def merge_rules(path: Path, ranks: int, kind_rules: dict[str, list[list[Any]]],
                source: str) -> dict[str, Any]:
    """Put the rules for ``ranks`` into the table at ``path`` (created if missing)."""
    table = (json.loads(path.read_text()) if path.is_file()
             else {"version": 1, "source": "", "rules": {}})
    for kind, rules in kind_rules.items():
        table["rules"].setdefault(kind, {})[str(ranks)] = rules
    table["source"] = source
    validate_table(table, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(table, indent=1) + "\n")
    return table


def _measure(args: argparse.Namespace) -> int:
    ctx = init()
    comm = ctx.comm
    algorithms = ["native", "chunked", "ring", "tree"] + (["hierarchical"] if ctx.num_nodes > 1 else [])
    algorithms = [a for a in algorithms if a in ALLREDUCE]
    budget = 0.02 if args.quick else 0.1
    kinds = {"float": np.float32, "half": np.float16}
    found: dict[str, list[list[Any]]] = {}
    for kind, dtype in kinds.items():
        timings: dict[int, dict[str, float]] = {}
        for nbytes in args.sizes:
            buf = np.zeros(max(1, nbytes // np.dtype(dtype).itemsize), dtype)
            timings[nbytes] = dict.fromkeys(algorithms, float("inf"))
            # best median of several rounds, the order rotated each round, so that
            # no algorithm always runs right after the same neighbour
            for rnd in range(1 if args.quick else args.rounds):
                for k in range(len(algorithms)):
                    name = algorithms[(k + rnd) % len(algorithms)]

                    def call(name: str = name) -> None:
                        allreduce(buf, algorithm=name, comm=comm)
                    seconds = time_op(comm, call, budget_s=budget,
                                      min_iters=3 if args.quick else 5)
                    timings[nbytes][name] = min(timings[nbytes][name], seconds)
            if ctx.rank == 0 and not args.quiet:
                row = "  ".join(f"{a} {t * 1e6:9.1f}" for a, t in timings[nbytes].items())
                print(f"n={comm.size} {kind:5s} {nbytes:>10d} B  {row} us", flush=True)
        found[kind] = rules_from_timings(timings)
    if ctx.rank == 0:
        source = (f"hpcdl tune on {socket.gethostname()}, "
                  f"{datetime.datetime.now().isoformat(timespec='seconds')}, {ctx.mpi_library}")
        merge_rules(Path(args.out), comm.size, found, source)
        print(f"n={comm.size}: {json.dumps(found)} -> {args.out}", flush=True)
    select.reload()
    return 0


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hpcdl tune", description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", default="2,3,4",
                   help="rank counts to tune when run outside a job (default 2,3,4)")
    p.add_argument("--out", default=str(user_table_path()),
                   help="table to write or update (default %(default)s)")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                   default=powers_of_4(4, 64 << 20), help="message sizes in bytes, comma separated")
    p.add_argument("--rounds", type=int, default=3,
                   help="time every algorithm this many times, order rotated; keep the best")
    p.add_argument("--quick", action="store_true", help="short timings (smoke test)")
    p.add_argument("--quiet", action="store_true", help="print only the resulting rules")
    return p.parse_args(list(argv))


def run_at_ranks(prog: str, module: str, ranks: str, args: list[str]) -> int:
    """Launch ``python -m module *args`` with ``hpcdl launch`` at each of the comma-separated
    ``ranks`` (>= 2) in turn; the first failure's exit code, else 0."""
    launcher = Path(sys.executable).with_name("hpcdl")
    cmd_head = [str(launcher)] if launcher.exists() else [sys.executable, "-m", "hpcdl"]
    for n in [int(r) for r in ranks.split(",") if r.strip()]:
        if n < 2:
            continue
        cmd = [*cmd_head, "launch", "-n", str(n), "--", "python", "-m", module, *args]
        print(f"{prog}: measuring at {n} ranks: {' '.join(cmd)}", flush=True)
        rc = subprocess.call(cmd)
        if rc:
            print(f"{prog}: the {n}-rank run failed (exit {rc})", file=sys.stderr)
            return rc
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if under_launcher():
        return _measure(args)
    passthrough = ["--out", args.out, "--sizes", ",".join(map(str, args.sizes)),
                   "--rounds", str(args.rounds)]
    passthrough += ["--quick"] * args.quick + ["--quiet"] * args.quiet
    rc = run_at_ranks("hpcdl tune", "hpcdl.tune", args.ranks, passthrough)
    if rc:
        return rc
    print(f"hpcdl tune: wrote {args.out}; 'auto' follows it with HPCDL_TUNE=off or "
          f"HPCDL_TUNING_FILE={args.out} (else it learns online)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
