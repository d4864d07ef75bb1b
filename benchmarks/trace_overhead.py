"""What tracing costs: off against on, alternated in one job.

    hpcdl launch -n 2 -- python benchmarks/trace_overhead.py [--rounds 5] [--json out.json]

Rows (the slowest rank's time, medians over ``--rounds`` alternating off/on
rounds; the overhead is the median of each round's on/off ratio, the two timed
back to back, which a machine whose speed drifts between rounds disturbs least):

* ``allreduce 4 KiB``: a blocking NumPy allreduce. Off it takes the cached fast
  path, on the general path with every event recorded.
* ``train step``: the demo's SmallCNN with the DistributedOptimizer, batch 32
  per rank (forward, backward with bucket allreduces, step).
* ``hook when off``: what the instrumented paths pay with tracing off, two
  ``if trace.ON`` tests per operation, timed directly, as a share of a 4 KiB
  allreduce on the general path (a torch tensor).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import timeit

import numpy as np
import torch

import hpcdl
import hpcdl.torch as hdt
from hpcdl import trace


def timed(comm, fn, iters: int) -> float:
    comm.barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    dt = np.array([(time.perf_counter() - t0) / iters])
    hpcdl.allreduce(dt, op="max", comm=comm)
    return float(dt[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=100, help="train steps per timed round")
    p.add_argument("--json")
    args = p.parse_args()
    ctx = hpcdl.init()
    comm = ctx.comm
    torch.set_num_threads(1)
    from hpcdl.examples.common import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN()
    opt = hdt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.01),
                                   named_parameters=model.named_parameters())
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    small = np.ones(1024, np.float32)
    cases = {"allreduce 4 KiB": (lambda: hpcdl.allreduce(small), 2000),
             "train step": (step, args.steps)}
    results: dict[str, dict[str, list[float]]] = {k: {"off": [], "on": []} for k in cases}
    folder = comm.bcast_object(tempfile.mkdtemp(prefix="hpcdl-trace-bench-")
                               if ctx.rank == 0 else None, 0)
    for name, (fn, iters) in cases.items():
        timed(comm, fn, max(3, iters // 10))  # warm up
        for rnd in range(args.rounds):
            for state in (("off", "on") if rnd % 2 == 0 else ("on", "off")):
                if state == "on":
                    trace.start(f"{folder}/{name.split()[0]}-{rnd}", comm)
                try:
                    results[name][state].append(timed(comm, fn, iters))
                finally:
                    trace.stop()
    tensor = torch.ones(1024)
    general = timed(comm, lambda: hpcdl.allreduce(tensor), 2000)
    check = min(timeit.repeat("trace.ON", globals={"trace": trace}, number=100_000,
                              repeat=5)) / 100_000
    rows = []
    for name, r in results.items():
        off, on = float(np.median(r["off"])), float(np.median(r["on"]))
        # Each round's on/off pair ran back to back: the median of the pairs' ratios is
        # robust to the machine's speed drifting between rounds (a shared VM's does).
        paired = float(np.median(np.array(r["on"]) / np.array(r["off"])))
        rows.append({"case": name, "off_us": off * 1e6, "on_us": on * 1e6,
                     "overhead": paired - 1})
    rows.append({"case": "hook when off", "off_us": 2 * check * 1e6, "on_us": None,
                 "overhead": 2 * check / general, "general_path_us": general * 1e6})
    if ctx.rank == 0:
        print(f"# {comm.size} ranks, {args.rounds} alternating rounds, medians; {ctx.mpi_library}")
        print(f"{'case':>18} {'off(us)':>10} {'on(us)':>10} {'overhead':>9}")
        for r in rows:
            on = f"{r['on_us']:10.2f}" if r["on_us"] is not None else f"{'-':>10}"
            print(f"{r['case']:>18} {r['off_us']:10.3f} {on} {100 * r['overhead']:+8.2f}%")
        print(f"# hook when off: two 'trace.ON' tests against a {general * 1e6:.1f} us "
              "general-path 4 KiB allreduce (torch tensor)")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
