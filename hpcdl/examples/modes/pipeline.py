"""``--mode pipeline``: the model cut into ``--stages`` pipeline stages, times
``--replicas`` data-parallel copies of the pipeline (stages x replicas = ranks).

Each rank builds only its own stage of :func:`digits_layers` (a deeper CNN than
SmallCNN: three convolutions and four dense layers, 105k parameters, so that
four stages each have real work). Micro-batches flow through torch's GPipe /
1F1B schedule; each stage's gradients are averaged over its replicas with
hpcdl's allreduce. ``--batch-size`` stays per rank: a replica's batch is
``batch_size x stages``, so the global batch equals the other modes'.

Checkpoints (``--checkpoint-dir``, hpcdl/pipeline/checkpoint.py) hold every stage
under the whole model's parameter names, through torch.distributed.checkpoint:
a resume at the same ``--stages``/``--replicas`` is exact, one at another layout
reshards. ``params_sha256`` hashes the whole model (the stages gathered).
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
from torch import nn

import hpcdl
import hpcdl.pipeline as hp
from hpcdl.torch import DistributedSampler

from .. import checkpointing
from ..common import Data, Progress, RunResult, epoch_row

__all__ = ["CHECKPOINTS", "add_arguments", "run", "digits_layers"]

CHECKPOINTS = True  # --checkpoint-dir/--resume are honoured (hpcdl/pipeline/checkpoint.py)


def digits_layers(classes: int = 10) -> list[Callable[[], nn.Module]]:
    """One builder per layer of the pipelined digits model (input N x 1 x 8 x 8)."""
    return [
        lambda: nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU()),
        lambda: nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU()),
        lambda: nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Flatten()),
        lambda: nn.Sequential(nn.Linear(512, 128), nn.ReLU()),
        lambda: nn.Sequential(nn.Linear(128, 128), nn.ReLU()),
        lambda: nn.Sequential(nn.Linear(128, 64), nn.ReLU()),
        lambda: nn.Linear(64, classes),
    ]


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--mode pipeline")
    g.add_argument("--stages", type=int, default=2, help="pipeline stages S (divides ranks)")
    g.add_argument("--replicas", type=int, default=None,
                   help="data-parallel copies D of the pipeline (default ranks / S)")
    g.add_argument("--microbatches", type=int, default=4, help="micro-batches M per batch")
    g.add_argument("--schedule", choices=("gpipe", "1f1b"), default="1f1b")
    g.add_argument("--balance", default="params",
                   help="'params' or comma-separated split points (layer indices)")


def run(args: argparse.Namespace, ctx: hpcdl.Context, device: torch.device,
        data: Data) -> RunResult:
    grid = hp.Grid(stages=args.stages, replicas=args.replicas)
    balance = args.balance if args.balance == "params" else \
        [int(v) for v in args.balance.split(",")]
    builders = digits_layers()
    stage = hp.build_stage(builders, grid.stages, grid.stage, balance=balance, seed=args.seed,
                           device=device)
    pipe = hp.Pipeline(stage, grid, args.microbatches, nn.functional.cross_entropy,
                       schedule=args.schedule, device=device)
    adam = torch.optim.Adam(stage.parameters(), lr=args.lr)
    opt = pipe.distributed_optimizer(adam)
    # the stage's parameters under the whole model's names, for checkpoints and the hash
    named = hp.whole_model_names(stage, hp.stage_bounds(builders, grid.stages,
                                                        balance)[grid.stage])

    train = torch.utils.data.TensorDataset(data.x_train, data.y_train)
    # The stages of one replica must see the same samples: shard by replica.
    sampler = DistributedSampler(train, num_replicas=grid.replicas, rank=grid.replica,
                                 shuffle=True, seed=args.seed)
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size * grid.stages,
                                         sampler=sampler, drop_last=True)
    bar = Progress(args.epochs * len(loader), ctx.rank == 0,
                   f"{grid.stages} stages x {grid.replicas} replicas")
    history: list[dict[str, float]] = []
    ck = checkpointing.make(args, hp.PipelineCheckpoint, grid=grid, model=named,
                            optimizer=adam, sampler=sampler, extra={"history": history})
    bar.update(ck.step)
    for epoch in ck.epochs(1, args.epochs + 1):
        sampler.set_epoch(epoch)
        start = time.perf_counter()
        running = torch.zeros(2, dtype=torch.float64)
        for x, y in ck.batches(loader, carry={"running": running}):
            opt.zero_grad()
            loss = pipe.step(x, y)
            opt.step()
            if loss is not None:  # the last stage: count each sample once
                running += torch.tensor([loss * len(y), len(y)], dtype=torch.float64)
            bar.update(1)
        hpcdl.allreduce(running, op="sum")
        elapsed = time.perf_counter() - start
        accuracy = evaluate(pipe, grid, data)
        row = epoch_row(epoch, float(running[0] / running[1]), accuracy, float(running[1]),
                        elapsed)
        history.append(row)
        bar.epoch(row)
    bar.close()
    final = history[-1]["accuracy"] if history else evaluate(pipe, grid, data)
    params = torch.tensor([0.0] * grid.stages)
    params[grid.stage] = sum(p.numel() for p in stage.parameters()) if grid.replica == 0 else 0
    hpcdl.allreduce(params, op="sum")
    return RunResult(history=history, test_accuracy=final, writer=ctx.rank == 0,
                     settings={"stages": grid.stages, "replicas": grid.replicas,
                               "microbatches": args.microbatches, "schedule": args.schedule,
                               "balance": args.balance,
                               "stage_parameters": [int(v) for v in params]},
                     fields={"params_sha256": hp.pipeline_sha256(named, grid),
                             "checkpoint": ck.summary()})


def evaluate(pipe: hp.Pipeline, grid: hp.Grid, data: Data) -> float:
    """Held-out accuracy: each replica scores every D-th sample through its pipeline."""
    mine = slice(grid.replica, None, grid.replicas)
    out = pipe.predict(data.x_test[mine])
    counts = torch.zeros(2, dtype=torch.float64)
    if out is not None:
        y = data.y_test[mine]
        counts += torch.tensor([float((out.argmax(1).cpu() == y).sum()), float(len(y))],
                               dtype=torch.float64)
    hpcdl.allreduce(counts, op="sum")
    return float(counts[0] / counts[1])
