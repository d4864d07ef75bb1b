"""DDP over the "hpcdl" backend vs DDP over gloo vs hpcdl's DistributedOptimizer.

    hpcdl launch -n 2 -- python benchmarks/torch_backend.py --json out/torch_backend_2.json

In one job, on the same fixed random batch per rank, rounds alternate between

* ``ddp-hpcdl``: torch DistributedDataParallel over the default "hpcdl" group;
* ``ddp-gloo``:  the same DDP over a gloo group of the same ranks (the peer);
* ``hpcdl-opt``: hpcdl.torch.DistributedOptimizer (no DDP),

so a noisy neighbour hurts all three alike. Each model in ``--models`` runs in
turn: ``smallcnn`` (the main job's CNN, ~0.1 M parameters) and ``mlp10m``
(12.6 M parameters, 50 MB of float32 gradients per step). The slowest rank's
median step sets the throughput.

``gpt`` in ``--models`` adds the GPT example's transformer (torch_backend_gpt.py):
FSDP2 and FSDP2 x TP (pairs of ranks) over "hpcdl" vs the same over gloo, in
tokens/s.

    hpcdl launch -n 4 -- python benchmarks/torch_backend.py --models gpt
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

import hpcdl
import hpcdl.torch as hdt
from torch_backend_gpt import add_arguments, run_gpt  # beside this file
from train_throughput import make_step  # beside this file: one training step, both benchmarks

MODES = ("ddp-hpcdl", "ddp-gloo", "hpcdl-opt")


def build(name: str) -> tuple[nn.Module, tuple[int, ...], int]:
    """(model, one sample's shape, classes)."""
    if name == "smallcnn":
        from hpcdl.examples.train import SmallCNN

        return SmallCNN(), (1, 8, 8), 10
    if name == "mlp10m":
        return nn.Sequential(nn.Flatten(), nn.Linear(1024, 4096), nn.ReLU(),
                             nn.Linear(4096, 2048), nn.ReLU(), nn.Linear(2048, 10)), (1024,), 10
    raise SystemExit(f"unknown model {name!r}; choose smallcnn or mlp10m")


def timed(step: Callable[[], None], steps: int) -> float:
    """Seconds per step over ``steps`` steps, ended by a barrier (every rank finished)."""
    t = time.perf_counter()
    for _ in range(steps):
        step()
    hpcdl.barrier()
    return (time.perf_counter() - t) / steps


def run_model(name: str, args: argparse.Namespace, gloo: Any) -> dict[str, float]:
    """Median seconds per step of each mode on this rank."""
    steps: dict[str, Callable[[], None]] = {}
    for mode in MODES:
        torch.manual_seed(0)
        model, shape, classes = build(name)
        x = torch.randn(args.batch_size, *shape)
        y = torch.randint(0, classes, (args.batch_size,))
        if mode == "hpcdl-opt":
            opt = hdt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.01),
                                           named_parameters=model.named_parameters())
        else:
            model = nn.parallel.DistributedDataParallel(
                model, process_group=gloo if mode == "ddp-gloo" else None)
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
        steps[mode] = make_step(model, opt, x, y)
    for mode in MODES:
        timed(steps[mode], args.warmup)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(args.iters):
        for mode in MODES:
            times[mode].append(timed(steps[mode], args.steps))
    del steps
    gc.collect()
    return {m: statistics.median(v) for m, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smallcnn,mlp10m")
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="steps per timed round")
    p.add_argument("--iters", type=int, default=3, help="rounds (modes alternate)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--json", default=None, help="write the results here (rank 0)")
    add_arguments(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ctx = hpcdl.init()
    dist.init_process_group("hpcdl")
    gloo = dist.new_group(list(range(ctx.size)), backend="gloo")
    rows: list[dict] = []
    gpt_rows: list[dict] = []
    for name in args.models.split(","):
        if name == "gpt":
            params, mine = run_gpt(args, ctx)
            everyone = ctx.comm.allgather_object(mine)
            tokens = args.gpt_batch * args.gpt_context
            for mode in mine:
                slow = max(r[mode] for r in everyone)
                gpt_rows.append({"model": "gpt", "params": params, "mode": mode,
                                 "ranks": ctx.size, "step_ms": 1e3 * slow,
                                 "tokens_per_s": tokens / slow})
            continue
        mine = run_model(name, args, gloo)
        everyone = ctx.comm.allgather_object(mine)
        slowest = {m: max(r[m] for r in everyone) for m in MODES}
        params = sum(q.numel() for q in build(name)[0].parameters())
        for mode in MODES:
            rows.append({"model": name, "params": params, "mode": mode, "ranks": ctx.size,
                         "step_ms": 1e3 * slowest[mode],
                         "samples_per_s": ctx.size * args.batch_size / slowest[mode]})
    if ctx.rank == 0:
        report(rows, gpt_rows, args, ctx.size)
    ctx.comm.barrier()
    dist.destroy_process_group()  # gloo and hpcdl groups together, on every rank
    ctx.comm.barrier()


def report_gpt(rows: list[dict], args: argparse.Namespace, size: int) -> None:
    print(f"# transformer: {size} rank(s), global batch {args.gpt_batch} x {args.gpt_context} "
          f"tokens, {args.threads} thread(s)/rank, median of {args.iters} rounds x "
          f"{args.steps} steps")
    print(f"# {'model':>9} {'params':>10} {'mode':>14} {'step(ms)':>9} {'tokens/s':>10} "
          f"{'vs gloo':>8}")
    by = {r["mode"]: r for r in rows}
    for r in rows:
        peer = by[r["mode"].rsplit("-", 1)[0] + "-gloo"]["tokens_per_s"]
        r["vs_gloo"] = r["tokens_per_s"] / peer
        print(f"  {r['model']:>9} {r['params'] / 1e6:>9.2f}M {r['mode']:>14} "
              f"{r['step_ms']:>9.1f} {r['tokens_per_s']:>10.0f} {r['vs_gloo']:>7.2f}x")


def report(rows: list[dict], gpt_rows: list[dict], args: argparse.Namespace,
           size: int) -> None:
    if gpt_rows:
        report_gpt(gpt_rows, args, size)
    if not rows:
        _write(args, size, rows, gpt_rows)
        return
    print(f"# torch_backend: {size} rank(s), batch {args.batch_size}/rank, {args.threads} "
          f"thread(s)/rank, median of {args.iters} rounds x {args.steps} steps")
    print(f"# {'model':>9} {'params':>10} {'mode':>10} {'step(ms)':>9} {'samples/s':>10} "
          f"{'vs gloo':>8} {'vs opt':>7}")
    by = {(r["model"], r["mode"]): r for r in rows}
    for r in rows:
        gloo = by[(r["model"], "ddp-gloo")]["samples_per_s"]
        opt = by[(r["model"], "hpcdl-opt")]["samples_per_s"]
        r["vs_gloo"], r["vs_opt"] = r["samples_per_s"] / gloo, r["samples_per_s"] / opt
        print(f"  {r['model']:>9} {r['params'] / 1e6:>9.2f}M {r['mode']:>10} "
              f"{r['step_ms']:>9.2f} {r['samples_per_s']:>10.1f} {r['vs_gloo']:>7.2f}x "
              f"{r['vs_opt']:>6.2f}x")
    _write(args, size, rows, gpt_rows)


def _write(args: argparse.Namespace, size: int, rows: list[dict], gpt_rows: list[dict]) -> None:
    sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "torch_backend", "settings": vars(args), "ranks": size,
                       "rows": rows, "transformer_rows": gpt_rows}, f, indent=2)


if __name__ == "__main__":
    main()
