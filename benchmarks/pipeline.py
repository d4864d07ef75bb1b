"""Pipeline parallelism: step time, measured bubble and activation memory, GPipe vs 1F1B.

    hpcdl launch -n 4 -- python benchmarks/pipeline.py --json out/pipeline.json \
        --timeline docs/img/pipeline-timeline.png

For S in --stages (each dividing the ranks: S stages x D = ranks / S replicas)
and M in --microbatches, both schedules train the same MLP (``--layers`` Linear
+ ReLU of width ``--width``) on a fixed global batch of ``--batch`` samples.
Per configuration, medians over ``--iters`` steps after ``--warmup``:

* ``step ms``: one optimizer step (pipeline step + replica averaging + update);
* ``bubble``: measured idle fraction of the pipeline step, 1 - (compute time of
  the stage's forward/backward calls) / (wall time of the step), averaged over
  the ranks, next to the theory (S - 1) / (M + S - 1);
* ``act KiB``: peak activation memory per stage (tensors autograd saved for
  backward, micro-batches alive at once), stage 0 / stage 1 / ...

The peer, in the same job: the same model data-parallel only (every rank holds
it whole, ``DistributedOptimizer`` over all ranks, global batch split across ranks).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import hpcdl
import hpcdl.pipeline as hp
import hpcdl.torch as hdt
from hpcdl.examples.common import set_threads


def builders(width: int, layers: int) -> list:
    out = []
    for i in range(layers - 1):
        out.append(lambda: nn.Sequential(nn.Linear(width, width), nn.ReLU()))
    out.append(lambda: nn.Linear(width, 10))
    return out


def batch(n: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, width, generator=g), torch.randint(0, 10, (n,), generator=g)


def median_ms(xs: list[float]) -> float:
    return 1e3 * statistics.median(xs)


def run_pipeline(args: argparse.Namespace, s: int, m: int, schedule: str) -> dict[str, Any]:
    ctx = hpcdl.get_context()
    grid = hp.Grid(stages=s)
    stage = hp.build_stage(builders(args.width, args.layers), s, grid.stage, seed=1)
    pipe = hp.Pipeline(stage, grid, m, nn.functional.cross_entropy, schedule=schedule)
    opt = pipe.distributed_optimizer(torch.optim.SGD(stage.parameters(), lr=1e-3))
    per_replica = args.batch // grid.replicas
    x, y = batch(per_replica, args.width)
    steps, bubbles, peaks = [], [], []
    for it in range(args.warmup + args.iters):
        timed = it >= args.warmup
        pipe.record_timeline(timed)
        hpcdl.barrier()
        t0 = time.perf_counter()
        opt.zero_grad()
        pipe.step(x, y)
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        if timed:
            steps.append(t2 - t0)
            bubbles.append(1.0 - min(1.0, sum(t.busy_seconds() for t in pipe.timelines)
                                     / (t1 - t0)))
            peaks.append(pipe.peak_activation_bytes)
    timeline = [(k, mb, a - t0, b - t0) for k, mb, a, b in pipe.timeline()]
    pipe.record_timeline(False)
    mine = {"stage": grid.stage, "replica": grid.replica, "step": median_ms(steps),
            "bubble": statistics.median(bubbles), "peak_bytes": max(peaks),
            "timeline": timeline}
    everyone = ctx.comm.allgather_object(mine)
    return {"schedule": schedule, "stages": s, "replicas": grid.replicas, "microbatches": m,
            "step_ms": max(r["step"] for r in everyone),
            "bubble": statistics.mean(r["bubble"] for r in everyone),
            "theory": (s - 1) / (m + s - 1),
            "peak_act_bytes": [max(r["peak_bytes"] for r in everyone if r["stage"] == i)
                               for i in range(s)],
            "timeline": {r["stage"]: r["timeline"] for r in everyone if r["replica"] == 0}}


def run_dp(args: argparse.Namespace) -> dict[str, Any]:
    ctx = hpcdl.get_context()
    model = nn.Sequential(*hp.build_layers(builders(args.width, args.layers),
                                           range(args.layers), seed=1))
    opt = hdt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=1e-3),
                                   named_parameters=model.named_parameters())
    x, y = batch(args.batch // ctx.size, args.width)
    steps = []
    for it in range(args.warmup + args.iters):
        hpcdl.barrier()
        t0 = time.perf_counter()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if it >= args.warmup:
            steps.append(time.perf_counter() - t0)
    return {"schedule": "data-parallel", "stages": 1, "replicas": ctx.size,
            "step_ms": max(ctx.comm.allgather_object(median_ms(steps)))}


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(10, 1.1 + 0.55 * sum(
        r["stages"] for r in results)), squeeze=False)
    for ax, r in zip(axes[:, 0], results):
        for stage, events in r["timeline"].items():
            for kind, mb, a, b in events:
                ax.broken_barh([(1e3 * a, 1e3 * (b - a))], (stage - 0.4, 0.8),
                               color="tab:blue" if kind == "F" else "tab:orange")
                ax.text(1e3 * (a + b) / 2, stage, str(mb), ha="center", va="center",
                        fontsize=7, color="white")
        ax.set_yticks(range(r["stages"]), [f"stage {i}" for i in range(r["stages"])])
        ax.invert_yaxis()
        ax.set_title(f"{r['schedule']}: S={r['stages']}, M={r['microbatches']}, measured "
                     f"bubble {100 * r['bubble']:.0f}% (theory {100 * r['theory']:.0f}%); "
                     "blue forward, orange backward, number = micro-batch", fontsize=9)
        ax.set_xlabel("ms since the step started")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", default="2,4")
    p.add_argument("--microbatches", default="1,2,4,8")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch", type=int, default=256, help="global batch")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--timeline", default=None, help="PNG of the measured timelines of "
                   "GPipe and 1F1B at the largest S and M")
    args = p.parse_args()
    ctx = hpcdl.init()
    set_threads(ctx.local_size, args.threads)
    backend = hp.init_process_group()
    rows: list[dict[str, Any]] = [run_dp(args)]
    for s in (int(v) for v in args.stages.split(",")):
        if ctx.size % s:
            continue
        for m in (int(v) for v in args.microbatches.split(",")):
            for schedule in ("gpipe", "1f1b"):
                if schedule == "1f1b" and m < s:
                    rows.append({"schedule": schedule, "stages": s, "microbatches": m,
                                 "skipped": "torch's Schedule1F1B needs M >= S"})
                    continue
                rows.append(run_pipeline(args, s, m, schedule))
    if ctx.rank != 0:
        return
    print(f"# {ctx.size} ranks, torch backend {backend}, MLP {args.layers} x {args.width}, "
          f"global batch {args.batch}, median of {args.iters} steps")
    print(f"{'schedule':>13} {'S':>2} {'D':>2} {'M':>2} {'step ms':>9} {'vs DP':>6} "
          f"{'bubble':>7} {'theory':>7}  act KiB per stage")
    dp = rows[0]["step_ms"]
    for r in rows:
        if "skipped" in r:
            print(f"{r['schedule']:>13} {r['stages']:>2} {'':>2} {r['microbatches']:>2}  "
                  f"({r['skipped']})")
        elif r["stages"] == 1:
            print(f"{r['schedule']:>13} {'-':>2} {r['replicas']:>2} {'-':>2} "
                  f"{r['step_ms']:9.2f} {1.0:6.2f}")
        else:
            acts = " / ".join(f"{b / 1024:.0f}" for b in r["peak_act_bytes"])
            print(f"{r['schedule']:>13} {r['stages']:>2} {r['replicas']:>2} "
                  f"{r['microbatches']:>2} {r['step_ms']:9.2f} {r['step_ms'] / dp:6.2f} "
                  f"{r['bubble']:7.2f} {r['theory']:7.2f}  {acts}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"ranks": ctx.size, "backend": backend,
                                               "args": vars(args), "rows": rows}, indent=1))
    if args.timeline:
        big_s = max(r["stages"] for r in rows if "timeline" in r)
        big_m = max(r["microbatches"] for r in rows if "timeline" in r and r["stages"] == big_s)
        pick = [r for r in rows if "timeline" in r and r["stages"] == big_s
                and r["microbatches"] == big_m]
        Path(args.timeline).parent.mkdir(parents=True, exist_ok=True)
        plot(pick, Path(args.timeline))
        print(f"wrote {args.timeline}")


if __name__ == "__main__":
    main()
