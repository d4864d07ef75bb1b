"""A long P-Reduce run (tests/test_preduce_jobs.py starts it): are communicators and memory flat?

    hpcdl launch -n 8 -- python tests/jobs/preduce_scale_job.py STEPS P OUT.json

Runs ``STEPS`` P-Reduce steps (reported by all ranks together) on a 37-element
float64 vector. Every 10% of its steps each rank samples:

* the communicators alive in this process (tests/helpers/comm_census.py: read from Open
  MPI's handle table); a communicator kept per group makes it climb;
* its resident memory (``VmRSS``).

Each rank keeps, for every group it joins, its value before and after; rank 0
gathers them and checks every group against NumPy. The answers go to OUT.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

import hpcdl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for helpers/
from helpers.comm_census import COUNTS, live_comms  # noqa: E402

N = 37


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def main() -> None:
    steps, p, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    ctx = hpcdl.init()
    rng = np.random.default_rng(ctx.rank + 101)
    x = rng.standard_normal(N)
    # Every record preallocated and touched now, so that the run's own bookkeeping does
    # not show up as growth in the RSS samples.
    before = np.full((steps, N), np.nan)
    after = np.full((steps, N), np.nan)
    keys: list[tuple[int, tuple[int, ...]]] = []
    session = hpcdl.PReduce(p, total_steps=steps, deadline=(0.0002, 0.001, 0.02), timeout=120)
    samples = [(0, live_comms(), rss_kib())]
    every = max(1, steps // ctx.size // 10)
    i = 0
    while True:
        x += rng.uniform(-1.0, 1.0, N)  # a local step: different on every rank
        before[len(keys)] = x
        r = session(x)
        if r.kind == "group" and len(r.members) > 1:
            after[len(keys)] = x
            keys.append((r.step, r.members))
        i += 1
        if i % every == 0:
            samples.append((i, live_comms(), rss_kib()))
        if r.kind == "stop":
            break
    samples.append((i, live_comms(), rss_kib()))
    mine = (ctx.rank, keys, before[:len(keys)], after[:len(keys)], samples, i)
    everyone = MPI.COMM_WORLD.gather(mine, root=0)
    if ctx.rank != 0:
        return
    groups: dict[tuple[int, tuple[int, ...]], dict[int, tuple]] = {}
    for rank, ks, b, a, _, _ in everyone:
        for k, bb, aa in zip(ks, b, a):
            groups.setdefault(k, {})[rank] = (bb, aa)
    bad, bitwise_pairs = [], 0
    eps = np.finfo(np.float64).eps
    for (step, members), got in groups.items():
        if sorted(got) != list(members):
            bad.append(f"group {members} at step {step}: reported by ranks {sorted(got)}")
            continue
        xs = np.stack([got[m][0] for m in members])
        ref = xs.sum(axis=0) / len(members)
        results = [got[m][1] for m in members]
        if not all(np.array_equal(results[0], v) for v in results[1:]):
            bad.append(f"group {members} at step {step}: members hold different values")
        # the stated tolerance (tests/helpers/numpy_reference.py): 4 n eps sum_i |x_i|
        tol = 4 * len(members) * eps * np.abs(xs).sum(axis=0)
        if np.any(np.abs(results[0] - ref) > tol):
            bad.append(f"group {members} at step {step}: off the NumPy mean by "
                       f"{np.max(np.abs(results[0] - ref)):.3g}")
        if len(members) == 2:  # (a + b) * 0.5 has one answer: bit for bit
            bitwise_pairs += 1
            if not np.array_equal(results[0], (xs[0] + xs[1]) * 0.5):
                bad.append(f"pair {members} at step {step}: not bitwise (a + b) / 2")
    result = {"counts_comms": COUNTS, "steps": steps, "group_size": p, "ranks": ctx.size, "groups": len(groups),
              "distinct_member_sets": len({m for _, m in groups}), "pairs_bitwise": bitwise_pairs,
              "calls": {r: e[5] for r, e in enumerate(everyone)},
              "samples": {r: e[4] for r, e in enumerate(everyone)},
              "controller_steps": session.controller.steps if session.controller else None,
              "errors": bad[:20], "error_count": len(bad)}
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
