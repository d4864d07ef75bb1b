"""What the watchdog costs: a small allreduce, and a step of the main job, with the
watchdog off and on, same run.

    hpcdl launch -n 2 -- python benchmarks/watchdog_overhead.py [--sizes 4096] [--rounds 41]
        [--step] [--json out.json]

``--step`` adds a row for one training step of the main job's model (SmallCNN, 38,282
parameters, batch 32 of 8x8 digits, Adam under ``hpcdl.torch.DistributedOptimizer``
whose gradient allreduces run on the off or the on communicator); its size column
reads ``step``.

"off" is hpcdl's default communicator (``HPCDL_TIMEOUT`` unset: a plain mpi4py
communicator); "on" is a communicator over the watchdog's counting view
(hpcdl/watchdog/comm.py) with a monitor thread sampling it, exactly what
``HPCDL_TIMEOUT`` sets up. Both run ``hpcdl.allreduce`` on a float32 NumPy
array (the inlined fast path). Rounds alternate off/on so drift from other load
hits both; the table gives each side's best-round median (us, slowest rank, as
benchmarks/allreduce.py) and the ratio on/off, and the median over rounds of
each round's on/off ratio (the pair runs back to back, so a machine whose speed
drifts between rounds disturbs it least).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from mpi4py import MPI

import hpcdl
from hpcdl.comm.mpi import MPICommunicator
from hpcdl.tune import time_op
from hpcdl.watchdog import watch
from hpcdl.watchdog.monitor import Monitor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[4096],
                   help="bytes, comma separated")
    p.add_argument("--rounds", type=int, default=41)
    p.add_argument("--budget", type=float, default=0.05, help="seconds per timed case")
    p.add_argument("--timeout", type=float, default=60.0, help="the watched side's timeout")
    p.add_argument("--step", action="store_true", help="also time a step of the main job")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    ctx = hpcdl.init(timeout=0)   # "off" is the plain communicator; "on" is built below
    off = ctx.comm
    on = MPICommunicator(watch(MPI.COMM_WORLD.Dup()))
    monitor = Monitor(args.timeout, MPI.COMM_WORLD.Dup())
    monitor.start()
    rows = []
    try:
        for nbytes in args.sizes:
            x = np.zeros(max(1, nbytes // 4), np.float32)
            times: dict[str, list[float]] = {"off": [], "on": []}
            for r in range(args.rounds):
                for name in (("off", "on") if r % 2 == 0 else ("on", "off")):
                    c = off if name == "off" else on
                    times[name].append(time_op(c, lambda: hpcdl.allreduce(x, comm=c),
                                               budget_s=args.budget, max_iters=100000))
            best = {k: min(v) for k, v in times.items()}
            # Each round's pair ran back to back: the median of the pairs' ratios is robust
            # to the machine's speed drifting between rounds (a shared VM's does).
            paired = float(np.median(np.array(times["on"]) / np.array(times["off"])))
            rows.append({"bytes": x.nbytes, "ranks": ctx.size, "off_us": best["off"] * 1e6,
                         "on_us": best["on"] * 1e6, "ratio": best["on"] / best["off"],
                         "paired_ratio": paired, "calls_counted": on.mpi.wd_seq})
        if args.step:
            rows.append(_step_row(args, ctx, off, on))
    finally:
        monitor.stop()
    if ctx.rank == 0:
        print(f"{'size(B)':>9} {'ranks':>5} {'off(us)':>9} {'on(us)':>9} {'on/off':>7} "
              f"{'paired':>7}")
        for row in rows:
            print(f"{row['bytes']:>9} {row['ranks']:>5} {row['off_us']:>9.2f} "
                  f"{row['on_us']:>9.2f} {row['ratio']:>7.3f} {row['paired_ratio']:>7.3f}")
        print("# off/on: best round of each; paired: median over rounds of on/off timed back "
              "to back")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)


def _step_row(args: argparse.Namespace, ctx: hpcdl.Context, off: MPICommunicator,
              on: MPICommunicator) -> dict:
    """One training step of the main job's model on each side, alternated per round."""
    import torch

    import hpcdl.torch as hdt
    from hpcdl.examples.common import SmallCNN

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(ctx.rank)
    x, y = torch.rand(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
    steps = {}
    for name, c in (("off", off), ("on", on)):
        torch.manual_seed(0)
        model = SmallCNN()
        opt = hdt.DistributedOptimizer(torch.optim.Adam(model.parameters(), lr=1e-3),
                                       named_parameters=model.named_parameters(), comm=c)

        def step(model: torch.nn.Module = model, opt: object = opt) -> None:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        steps[name] = step
    times: dict[str, list[float]] = {"off": [], "on": []}
    budget = max(args.budget, 0.2)
    for r in range(args.rounds):
        for name in (("off", "on") if r % 2 == 0 else ("on", "off")):
            c = off if name == "off" else on
            times[name].append(time_op(c, steps[name], budget_s=budget, max_iters=10000))
    best = {k: min(v) for k, v in times.items()}
    paired = float(np.median(np.array(times["on"]) / np.array(times["off"])))
    return {"bytes": "step", "ranks": ctx.size, "off_us": best["off"] * 1e6,
            "on_us": best["on"] * 1e6, "ratio": best["on"] / best["off"],
            "paired_ratio": paired, "calls_counted": on.mpi.wd_seq}


if __name__ == "__main__":
    main()
