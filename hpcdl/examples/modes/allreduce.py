"""``--mode allreduce`` (the default): data parallel, gradients averaged by the
DistributedOptimizer's bucketed allreduce, overlapped with the backward pass."""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import hpcdl
import hpcdl.torch as hdt

from .. import checkpointing
from .. import fault_injection as inject
from ..common import Data, Progress, RunResult, SmallCNN, epoch_row, evaluate, make_compression

__all__ = ["CHECKPOINTS", "add_arguments", "run"]

CHECKPOINTS = True  # --checkpoint-dir/--resume are honoured (checkpointing.py)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--mode allreduce")
    g.add_argument("--algorithm", default="auto", help=f"allreduce algorithm "
                   f"({', '.join(hpcdl.algorithm_names())})")
    g.add_argument("--compression", choices=("none", "fp16"), default="none")
    g.add_argument("--fusion-mb", type=float, default=hdt.DEFAULT_FUSION_MB,
                   help="bucket size in MB; 0 sends each tensor alone")
    g.add_argument("--amp", action="store_true",
                   help="mixed precision: float16 + GradScaler on cuda, bfloat16 on cpu")


def run(args: argparse.Namespace, ctx: hpcdl.Context, device: torch.device,
        data: Data) -> RunResult:
    model = SmallCNN().to(device)
    hdt.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = hdt.DistributedOptimizer(torch.optim.Adam(model.parameters(), lr=args.lr),
                                   named_parameters=model.named_parameters(),
                                   compression=make_compression(args.compression),
                                   fusion_threshold_mb=args.fusion_mb, algorithm=args.algorithm)
    hdt.broadcast_optimizer_state(opt, root_rank=0)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    # bfloat16 has float32's exponent range: no loss scaling needed on the CPU.
    scaler = hdt.GradScaler(device.type, enabled=args.amp and device.type == "cuda")

    train = torch.utils.data.TensorDataset(data.x_train, data.y_train)
    sampler = hdt.DistributedSampler(train, shuffle=True, seed=args.seed)
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, sampler=sampler)

    bar = Progress(args.epochs * len(loader), ctx.rank == 0, f"{ctx.size} rank(s)")
    history: list[dict[str, float]] = []
    ck = checkpointing.make(args, comm=ctx.comm, model=model, optimizer=opt, sampler=sampler,
                            scaler=scaler, compression=opt.compression,
                            extra={"history": history})
    bar.update(ck.step)
    for epoch in ck.epochs(1, args.epochs + 1):
        sampler.set_epoch(epoch)
        start = time.perf_counter()
        # Summed on the device: a float(loss) per step would wait for the GPU every step.
        running = torch.zeros(2, dtype=torch.float64, device=device)
        for x, y in ck.batches(loader, carry={"running": running}):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad()
            with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
                loss = nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            inject.kill_point(ck.step + 1, "allreduce")   # test-only (HPCDL_TEST_KILL)
            scaler.step(opt)
            scaler.update()
            inject.record_commit(0, epoch, ck.step + 1)    # test-only (HPCDL_TEST_SAMPLES)
            running[0] += loss.detach().double() * len(y)
            running[1] += len(y)
            bar.update(1)
        loss_sum = running.cpu()
        hpcdl.allreduce(loss_sum, op="sum")
        elapsed = time.perf_counter() - start
        accuracy = evaluate(model, data.x_test, data.y_test, device)
        row = epoch_row(epoch, float(loss_sum[0] / loss_sum[1]), accuracy, float(loss_sum[1]),
                        elapsed)
        history.append(row)
        bar.epoch(row)
    bar.close()
    final = history[-1]["accuracy"] if history else evaluate(model, data.x_test, data.y_test,
                                                               device)
    return RunResult(history=history, test_accuracy=final, writer=ctx.rank == 0,
                     settings={"buckets": len(opt.buckets)}, fields=checkpointing.fields(ck, model))
