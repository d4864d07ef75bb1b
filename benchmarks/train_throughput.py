"""Synthetic training throughput, Horovod style: hpcdl's DistributedOptimizer vs DDP/gloo.

    hpcdl launch -n 2 -- python benchmarks/train_throughput.py --model smallcnn
    srun python benchmarks/train_throughput.py --model resnet50 --device cuda --json r50.json

One fixed random batch per rank (no data loading), ``--warmup`` steps, then
``--iters`` timed rounds of ``--steps`` steps each. In the same job it measures

* ``single``: rank 0 alone, plain torch optimizer (the other ranks wait without
  spinning): throughput(1); or pass ``--single SAMPLES_PER_S`` measured elsewhere;
* ``hpcdl-1``: rank 0 alone with the DistributedOptimizer over a 1-rank
  communicator: the wrapper's own overhead over a single-process step;
* ``hpcdl``: all ranks, DistributedOptimizer;
* ``ddp``: all ranks, torch DistributedDataParallel over gloo (the peer).

hpcdl and ddp rounds alternate, so a noisy neighbour hurts both alike.
Scaling efficiency = throughput(N) / (N x throughput(1)).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import statistics
import sys
import time
from typing import Any, Callable

import torch
from torch import nn

import hpcdl
import hpcdl.torch as hdt
from hpcdl.comm.mpi import MPICommunicator


def build_model(name: str) -> tuple[nn.Module, tuple[int, ...], int]:
    """(model, input shape of one sample, classes)."""
    if name == "smallcnn":
        from hpcdl.examples.train import SmallCNN

        return SmallCNN(), (1, 8, 8), 10
    if name == "resnet50":
        try:
            import torchvision
        except ImportError:
            raise SystemExit("--model resnet50 needs torchvision: pip install torchvision "
                             "(the build matching your torch, e.g. from the same CUDA index)")
        return torchvision.models.resnet50(), (3, 224, 224), 1000
    raise SystemExit(f"unknown --model {name!r}; choose smallcnn or resnet50")


def wait_quietly(comm: MPICommunicator) -> None:
    """A barrier that sleeps instead of spinning, so rank 0's solo timing gets the cores."""
    req = comm.mpi.Ibarrier()
    while not req.Test():
        time.sleep(0.005)


def timed(step: Callable[[], None], args: argparse.Namespace, sync: Callable[[], None]) -> list[float]:
    """Seconds per step, one value per round."""
    for _ in range(args.warmup):
        step()
    sync()
    out = []
    for _ in range(args.iters):
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        out.append((time.perf_counter() - t) / args.steps)
    return out


def make_step(model: nn.Module, opt: Any, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return step


def fresh(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, torch.Tensor,
                                                                    torch.Tensor]:
    torch.manual_seed(0)
    model, shape, classes = build_model(args.model)
    x = torch.randn(args.batch_size, *shape, device=device)
    y = torch.randint(0, classes, (args.batch_size,), device=device)
    return model.to(device), x, y


def init_gloo(ctx: hpcdl.Context) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        return
    addr = ctx.comm.bcast_object(socket.gethostname() if ctx.rank == 0 else None, 0)
    port = 0
    if ctx.rank == 0:
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
    port = ctx.comm.bcast_object(port, 0)
    dist.init_process_group("gloo", init_method=f"tcp://{addr}:{port}", rank=ctx.rank,
                            world_size=ctx.size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smallcnn", choices=("smallcnn", "resnet50"))
    p.add_argument("--batch-size", type=int, default=64, help="per rank")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=20, help="steps per timed round")
    p.add_argument("--iters", type=int, default=5, help="timed rounds (alternating hpcdl/ddp)")
    p.add_argument("--fusion-mb", type=float, default=hdt.DEFAULT_FUSION_MB)
    p.add_argument("--threads", type=int, default=0, help="0: cores / ranks on this node")
    p.add_argument("--single", type=float, default=None,
                   help="throughput(1) in samples/s measured elsewhere (skips the solo run)")
    p.add_argument("--json", default=None, help="write the results here (rank 0)")
    args = p.parse_args()

    ctx = hpcdl.init()
    from hpcdl.examples.train import set_threads

    threads = set_threads(ctx.local_size, args.threads)
    device = torch.device("cuda", ctx.gpu or 0) if args.device == "cuda" else torch.device("cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    results: dict[str, list[float]] = {}

    # -- rank 0 alone: plain torch, then the wrapper on a 1-rank communicator -------------
    solo = MPICommunicator(ctx.comm.mpi.Split(0 if ctx.rank == 0 else 1, ctx.rank))
    if ctx.rank == 0:
        model, x, y = fresh(args, device)
        plain = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        wrapped_model, wx, wy = fresh(args, device)
        wrapped = hdt.DistributedOptimizer(
            torch.optim.SGD(wrapped_model.parameters(), lr=0.01, momentum=0.9),
            named_parameters=wrapped_model.named_parameters(), fusion_threshold_mb=args.fusion_mb,
            comm=solo)
        results["single"], results["hpcdl-1"] = [], []
        for _ in range(2):  # alternate, twice, for the same reason as below
            if args.single is None:
                results["single"] += timed(make_step(model, plain, x, y), args, sync)
            results["hpcdl-1"] += timed(make_step(wrapped_model, wrapped, wx, wy), args, sync)
    wait_quietly(ctx.comm)

    # -- all ranks: hpcdl and DDP/gloo, alternating rounds ------------------------------
    init_gloo(ctx)
    h_model, hx, hy = fresh(args, device)
    h_opt = hdt.DistributedOptimizer(torch.optim.SGD(h_model.parameters(), lr=0.01, momentum=0.9),
                                     named_parameters=h_model.named_parameters(),
                                     fusion_threshold_mb=args.fusion_mb)
    d_model, dx, dy = fresh(args, device)
    ddp = nn.parallel.DistributedDataParallel(
        d_model, device_ids=[device.index] if device.type == "cuda" else None,
        bucket_cap_mb=args.fusion_mb)
    d_opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    h_step, d_step = make_step(h_model, h_opt, hx, hy), make_step(ddp, d_opt, dx, dy)
    one = argparse.Namespace(**{**vars(args), "iters": 1})
    results["hpcdl"], results["ddp"] = [], []
    for _ in range(args.iters):
        results["hpcdl"] += timed(h_step, one, sync)
        results["ddp"] += timed(d_step, one, sync)

    report(ctx, args, threads, results)
    import torch.distributed as dist

    # Tear DDP and gloo down on every rank together, before any rank exits: the
    # Reducer holds the process group, and a gloo group destroyed by garbage
    # collection after its peer has exited blocks forever in its destructor
    # (seen here: rank 0 hung in ~ProcessGroupGloo while rank 1 sat in MPI_Finalize).
    del h_step, d_step, d_opt, ddp
    gc.collect()
    ctx.comm.barrier()
    dist.destroy_process_group()
    ctx.comm.barrier()


def report(ctx: hpcdl.Context, args: argparse.Namespace, threads: int,
           results: dict[str, list[float]]) -> None:
    # The slowest rank sets the pace of a synchronous step: use its median.
    per_rank = {k: statistics.median(v) for k, v in results.items() if v}
    everyone = ctx.comm.allgather_object(per_rank)
    if ctx.rank != 0:
        return
    step_s = {k: max(r[k] for r in everyone if k in r) for k in per_rank}
    if args.single is not None:
        step_s["single"] = args.batch_size / args.single
    base = args.batch_size / step_s["single"]
    rows = []
    for mode, ranks in (("single", 1), ("hpcdl-1", 1), ("hpcdl", ctx.size), ("ddp", ctx.size)):
        per = args.batch_size / step_s[mode]
        rows.append({"mode": mode, "ranks": ranks, "step_ms": 1e3 * step_s[mode],
                     "samples_per_s_rank": per, "samples_per_s_total": per * ranks,
                     "scaling_efficiency": per * ranks / (ranks * base)})
    overhead = step_s["hpcdl-1"] / step_s["single"] - 1
    print(f"# train_throughput: model {args.model}, batch {args.batch_size}/rank, "
          f"{ctx.size} rank(s), {threads} thread(s)/rank, device {args.device}, "
          f"fusion {args.fusion_mb} MB, median of {args.iters} rounds x {args.steps} steps")
    print(f"# {'mode':>9} {'ranks':>6} {'step(ms)':>10} {'samples/s/rank':>15} "
          f"{'samples/s total':>16} {'scaling eff':>12}")
    for r in rows:
        print(f"  {r['mode']:>9} {r['ranks']:>6} {r['step_ms']:>10.2f} "
              f"{r['samples_per_s_rank']:>15.1f} {r['samples_per_s_total']:>16.1f} "
              f"{100 * r['scaling_efficiency']:>11.1f}%")
    h, d = rows[2]["samples_per_s_total"], rows[3]["samples_per_s_total"]
    print(f"# hpcdl / ddp total throughput: {h / d:.3f}x; DistributedOptimizer overhead over a "
          f"single-process step (1 rank): {100 * overhead:+.1f}%")
    sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "train_throughput", "settings": vars(args), "ranks": ctx.size,
                       "threads_per_rank": threads, "rows": rows,
                       "hpcdl_over_ddp": h / d, "optimizer_overhead": overhead,
                       "host": os.uname().nodename}, f, indent=2)


if __name__ == "__main__":
    main()
