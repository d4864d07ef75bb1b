"""``hpcdl model measure``: launch the measurements at several rank counts (or, inside a
job, measure at its size) and merge them into the model's data file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ..context import get_context
from ..runtime import under_launcher
from ..tune import powers_of_4, run_at_ranks
from .measure import measure_here, merge_run, user_measurements_path

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hpcdl model measure", description=__doc__)
    p.add_argument("--ranks", default="2,3,4", help="rank counts outside a job (default 2,3,4)")
    p.add_argument("--out", type=Path, default=user_measurements_path())
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                   default=powers_of_4(4, 64 << 20))
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds over every size and algorithm (best of them is fitted)")
    p.add_argument("--budget", type=float, default=0.05, help="seconds per timed case")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.rounds < 1:
        p.error(f"--rounds {args.rounds}: need at least 1")
    if not under_launcher():
        rc = run_at_ranks("hpcdl model measure", "hpcdl.model.measure_cli", args.ranks,
                          ["--out", str(args.out), "--sizes", ",".join(map(str, args.sizes)),
                           "--rounds", str(args.rounds), "--budget", str(args.budget)])
        if rc == 0:
            print(f"hpcdl model measure: wrote {args.out}; now run 'hpcdl model'")
        return rc
    record = measure_here(args.sizes, rounds=args.rounds, budget_s=args.budget)
    if get_context().rank == 0:
        merge_run(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
