"""Stragglers: allreduce vs static partial reduce vs dynamic P-Reduce, to a target accuracy.

    hpcdl launch -n 4 -- python benchmarks/straggler.py --json out/straggler.json

The digits CNN of the main job, 4 ranks, local batch 32, Adam, lr 3e-3, from the
same initial model, in one job for every (setting, method):

* settings: ``none`` (every rank the same speed), ``one2x`` (rank size-1's steps
  take 2x as long), ``random`` (every rank, every step, a slowdown drawn from 1-3x);
* methods: ``allreduce`` (DistributedOptimizer, gradients averaged every step),
  ``partial`` (static ``partial_allreduce`` of the parameters, groups of 2,
  rotating), ``preduce2`` / ``preduce3`` (dynamic P-Reduce, P = 2 / 3).
  (A parameter-server row in ssp mode is not here: hpcdl/ps had not landed.)

A step's compute is its real forward/backward plus ``--compute-ms`` of sleep,
the stand-in for a model whose step is longer than the digits CNN's ~2 ms; a
slowdown ``f`` sleeps ``f * compute + (f - 1) * real`` *before* the forward
pass (so a slow rank's gradients are late, as on a slow GPU). Sleeping, not
spinning, keeps the 2-core test machine's contention out of the comparison.
Every epoch (``len(train) / 32`` local steps summed over the ranks) the ranks'
models are averaged and evaluated; time to target counts training time only.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from typing import Any

import torch
from torch import nn

import hpcdl
import hpcdl.torch as hdt
from hpcdl.examples.common import SmallCNN, evaluate, load_data, set_threads
from hpcdl.examples.modes.preduce import batches

METHODS = ("allreduce", "partial", "preduce2", "preduce3")
SETTINGS = ("none", "one2x", "random")


class Slowdown:
    def __init__(self, setting: str, rank: int, size: int, compute_s: float, seed: int) -> None:
        self.setting, self.rank, self.size, self.compute_s = setting, rank, size, compute_s
        self.rng = random.Random(seed * 1000 + rank)
        self.real = 0.0  # the last step's measured forward + backward

    def wait(self) -> None:
        if self.setting == "one2x":
            f = 2.0 if self.rank == self.size - 1 else 1.0
        elif self.setting == "random":
            f = self.rng.uniform(1.0, 3.0)
        else:
            f = 1.0
        time.sleep(f * self.compute_s + (f - 1.0) * self.real)


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()


def load_flat(model: nn.Module, flat: torch.Tensor) -> None:
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(flat, model.parameters())


def run_one(method: str, setting: str, args: argparse.Namespace, data: Any,
            ctx: hpcdl.Context) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    model = SmallCNN()
    hdt.broadcast_parameters(model.state_dict(), root_rank=0)
    adam = torch.optim.Adam(model.parameters(), lr=args.lr)
    opt = hdt.DistributedOptimizer(adam, named_parameters=model.named_parameters()) \
        if method == "allreduce" else adam
    slow = Slowdown(setting, ctx.rank, ctx.size, args.compute_ms / 1000, args.seed)
    data_iter = batches(data, args.batch_size, args.seed)
    spe = math.ceil(len(data.y_train) / args.batch_size)  # local steps per epoch, all ranks
    session = avg = None
    if method.startswith("preduce"):
        session = hpcdl.PReduce(int(method[-1]), total_steps=args.max_epochs * spe,
                                sync_every=spe)
        avg = hdt.PReduceAverager(model.parameters(), session)

    def step() -> int:
        slow.wait()
        x, y = next(data_iter)
        t = time.perf_counter()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        # forward + backward only: opt.step() of allreduce waits for the other ranks, and
        # scaling that wait by the slowdown would feed back into every rank's next step
        slow.real = time.perf_counter() - t
        opt.step()
        return len(y)

    train_s, samples, epochs, reached, acc, local_step = 0.0, 0, 0, None, 0.0, 0
    while epochs < args.max_epochs:
        start = time.perf_counter()
        mine = 0
        if session is not None:
            while True:
                mine += step()
                reply = avg()
                if reply.kind == "stop" or (reply.kind == "sync" and reply.reason == "every"):
                    break
        else:
            for _ in range(math.ceil(spe / ctx.size)):
                mine += step()
                if method == "partial":
                    flat = flat_params(model)
                    hpcdl.partial_allreduce(flat, 2, local_step)
                    load_flat(model, flat)
                local_step += 1
            if method == "partial":  # the epoch's full average, as P-Reduce's epoch sync
                flat = flat_params(model)
                hpcdl.allreduce(flat, op="avg")
                load_flat(model, flat)
        train_s += time.perf_counter() - start
        count = torch.tensor([float(mine)], dtype=torch.float64)
        hpcdl.allreduce(count, op="sum")
        samples += int(count[0])
        epochs += 1
        acc = evaluate(model, data.x_test, data.y_test, torch.device("cpu"))
        if reached is None and acc >= args.target:
            reached = (train_s, epochs)
            break  # every rank has the same acc: they all stop here
    if session is not None and not session.stopped:
        avg.close()
    return {"setting": setting, "method": method, "time_to_target_s": reached[0] if reached
            else None, "epochs_to_target": reached[1] if reached else None,
            "final_accuracy": acc, "samples": samples, "train_s": train_s,
            "samples_per_s": samples / train_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", type=float, default=0.92, help="test accuracy to reach")
    p.add_argument("--max-epochs", type=int, default=12)
    p.add_argument("--compute-ms", type=float, default=20.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--json", default=None, help="write the rows here (rank 0)")
    args = p.parse_args()
    ctx = hpcdl.init()
    set_threads(ctx.local_size, 1)
    data = hdt.broadcast_object(load_data(args.seed) if ctx.rank == 0 else None)
    rows = []
    for setting in args.settings.split(","):
        for method in args.methods.split(","):
            rows.append(run_one(method, setting, args, data, ctx))
            if ctx.rank == 0:
                r = rows[-1]
                print(f"  done {setting:7s} {method:10s} {r['train_s']:.1f} s", flush=True)
    if ctx.rank != 0:
        return
    print(f"\n{ctx.size} ranks, target {100 * args.target:.0f}% test accuracy, "
          f"compute {args.compute_ms:g} ms/step + real, max {args.max_epochs} epochs")
    print(f"{'setting':8s} {'method':10s} {'to target (s)':>13s} {'epochs':>6s} "
          f"{'samples/s':>9s} {'final acc':>9s} {'speed-up vs allreduce':>22s}")
    for r in rows:
        base = next(b for b in rows if b["setting"] == r["setting"] and b["method"] == "allreduce") \
            if any(b["method"] == "allreduce" for b in rows) else None
        t = r["time_to_target_s"]
        up = f"{base['time_to_target_s'] / t:.2f}x" if base and t and base["time_to_target_s"] \
            else "-"
        print(f"{r['setting']:8s} {r['method']:10s} {t if t is not None else float('nan'):13.2f} "
              f"{r['epochs_to_target'] or '-':>6} {r['samples_per_s']:9.0f} "
              f"{100 * r['final_accuracy']:8.2f}% {up:>22s}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "straggler", "ranks": ctx.size, "settings": vars(args),
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
