"""Parameter server benchmark: push/pull throughput and training steps/s vs allreduce.

    hpcdl launch -n 4 -- python benchmarks/ps.py --json out/ps.json

1. ``push/pull``: the last rank serves one flat float32 parameter of each size;
   the workers call ``push_pull`` back to back (async mode, so no worker waits
   for another). GB/s = bytes through the server (gradient in + parameters out)
   per second.
2. ``steps/s``: SmallCNN on a fixed random batch per rank, Adam. In the same job:
   ``allreduce`` (every rank trains, hpcdl.torch.DistributedOptimizer) and the
   parameter server in ``sync``, ``ssp(2)`` and ``async`` (1 server, the other
   ranks train), without and with a slow worker. The slow worker sleeps 2x the
   allreduce step time measured first, ``--slow-pattern every``: worker 0 on
   every step; ``rotate``: worker ``step mod W`` (a straggler that moves, the
   case bounded staleness is made for). Reported: the median over fast workers of
   their steps/s, and its ratio to allreduce's in the same slow setting.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np
import torch
from torch import nn

import hpcdl
import hpcdl.ps as ps
import hpcdl.torch as hdt
from hpcdl.examples.common import SmallCNN


def push_pull_rate(ctx: hpcdl.Context, mib: float, iters: int) -> float | None:
    n = int(mib * (1 << 20) // 4)
    p = ps.setup({"w": np.zeros(n, np.float32)}, optimizer=ps.SGD(lr=1e-9), mode="async")
    if p.is_server:
        stats = p.serve()
        rate = (stats["bytes_in"] + stats["bytes_out"]) / stats["seconds"] / 1e9
    else:
        g = {"w": np.ones(n, np.float32)}
        p.push_pull(g)
        for _ in range(iters):
            p.push_pull(g)
        p.close()
        rate = None
    return ctx.comm.bcast_object(rate, root=p.roles.servers[0])


def slow_sleep(pattern: str, worker: int, step: int, workers: int, seconds: float) -> None:
    if seconds and ((pattern == "every" and worker == 0) or
                    (pattern == "rotate" and step % workers == worker)):
        time.sleep(seconds)


def run_training(ctx: hpcdl.Context, kind: str, steps: int, sleep: float, pattern: str,
                 batch: int) -> float:
    """Median steps/s of the fast workers (all workers when nobody is slowed)."""
    torch.manual_seed(0)
    model = SmallCNN()
    x = torch.rand(batch, 1, 8, 8)
    y = torch.randint(0, 10, (batch,))
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    if kind == "allreduce":
        opt = hdt.DistributedOptimizer(adam, named_parameters=model.named_parameters())
        index, workers, group, server = ctx.rank, ctx.size, ctx.comm, None
    else:
        mode, s = {"sync": ("sync", 0), "ssp2": ("ssp", 2), "async": ("async", 0)}[kind]
        server = hdt.ParameterServer(model, adam, mode=mode, staleness=s, num_servers=1)
        if server.is_server:
            server.serve()
            rate = None
            return ctx.comm.bcast_object(rate, root=0)
        opt, index, workers, group = server, server.worker_rank, server.num_workers, \
            server.worker_comm
    start = 0.0
    for step in range(steps + 3):
        if step == 3:
            start = time.perf_counter()          # after 3 warm-up steps
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        slow_sleep(pattern, index, step, workers, sleep)
        opt.step()
    mine = steps / (time.perf_counter() - start)
    if server is not None:
        server.close()
    rates = group.allgather_object(mine)
    fast = [r for i, r in enumerate(rates) if not (sleep and pattern == "every" and i == 0)]
    return ctx.comm.bcast_object(statistics.median(fast), root=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-mib", type=float, nargs="+", default=[1, 16])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--slow-pattern", choices=("every", "rotate"), nargs="+",
                    default=["every", "rotate"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    ctx = hpcdl.init()
    torch.set_num_threads(1)
    if ctx.size < 3:
        raise SystemExit("run at 3 or 4 ranks: 1 server and at least 2 workers")
    out: dict[str, Any] = {"ranks": ctx.size, "push_pull": [], "training": []}
    for mib in args.sizes_mib:
        rate = push_pull_rate(ctx, mib, args.iters)
        out["push_pull"].append({"MiB": mib, "GB_per_s": rate})
    base = run_training(ctx, "allreduce", args.steps, 0.0, "every", args.batch)
    sleep = 2.0 / base
    rows = []
    for pattern in [None, *args.slow_pattern]:
        s = sleep if pattern else 0.0
        ref = base if pattern is None else run_training(ctx, "allreduce", args.steps, s,
                                                        pattern, args.batch)
        rows.append(("allreduce", pattern, ref, 1.0))
        for kind in ("sync", "ssp2", "async"):
            r = run_training(ctx, kind, args.steps, s, pattern or "every", args.batch)
            rows.append((kind, pattern, r, r / ref))
    out["slow_sleep_s"] = sleep
    out["training"] = [{"config": k, "slow": p or "none", "fast_steps_per_s": r,
                        "vs_allreduce": q} for k, p, r, q in rows]
    if ctx.rank == 0:
        print(f"# parameter server, {ctx.size} ranks (PS: 1 server + {ctx.size - 1} workers; "
              f"allreduce: {ctx.size} workers)")
        print(f"{'size':>8} {'push+pull GB/s':>15}")
        for row in out["push_pull"]:
            print(f"{row['MiB']:>6g}Mi {row['GB_per_s']:>15.3f}")
        print(f"\nslow worker sleeps {1e3 * sleep:.1f} ms (2x the allreduce step)")
        print(f"{'config':>10} {'slow':>7} {'fast steps/s':>13} {'vs allreduce':>13}")
        for row in out["training"]:
            print(f"{row['config']:>10} {row['slow']:>7} {row['fast_steps_per_s']:>13.1f} "
                  f"{row['vs_allreduce']:>12.2f}x")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
