"""``--mode preduce``: dynamic P-Reduce model averaging (``--group-size P``).

Every rank steps its own Adam on its own shard, then averages its parameters
with the first ranks that are ready (at most P). A fast rank is never held back
by a slow one outside its group, so fast ranks take more of the steps: an
"epoch" is the controller's count of ``len(train) / batch_size`` steps from
all ranks together, closed by a full sync (all ranks average, then evaluate).
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Iterator

import torch
from torch import nn

import hpcdl
import hpcdl.torch as hdt

from ..common import Data, Progress, RunResult, SmallCNN, epoch_row, evaluate

__all__ = ["add_arguments", "run", "batches"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--mode preduce")
    g.add_argument("--group-size", type=int, default=2,
                   help="P: at most this many ranks average together (2 <= P <= ranks)")
    g.add_argument("--max-groups", type=int, default=0,
                   help="groups before a forced full sync if still disconnected; 0: default")


def batches(data: Data, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's shard, reshuffled on every pass, forever (fast ranks pass it more often)."""
    train = torch.utils.data.TensorDataset(data.x_train, data.y_train)
    sampler = hdt.DistributedSampler(train, shuffle=True, seed=seed)
    loader = torch.utils.data.DataLoader(train, batch_size=batch_size, sampler=sampler)
    epoch = 0
    while True:
        epoch += 1
        sampler.set_epoch(epoch)
        yield from loader


def run(args: argparse.Namespace, ctx: hpcdl.Context, device: torch.device,
        data: Data) -> RunResult:
    model = SmallCNN().to(device)
    hdt.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(len(data.y_train) / args.batch_size)
    session = hpcdl.PReduce(args.group_size, total_steps=args.epochs * steps_per_epoch,
                            sync_every=steps_per_epoch, max_groups=args.max_groups or None)
    avg = hdt.PReduceAverager(model.parameters(), session)

    bar = Progress(args.epochs, ctx.rank == 0, f"{ctx.size} rank(s), P={args.group_size}",
                   unit="epoch")
    history: list[dict[str, float]] = []
    running = torch.zeros(3, dtype=torch.float64)  # loss sum, samples, steps (this rank)
    start = time.perf_counter()
    for x, y in batches(data, args.batch_size, args.seed):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        running += torch.tensor([float(loss.detach()) * len(y), len(y), 1.0],
                                dtype=torch.float64)
        reply = avg()
        if reply.kind == "group":
            continue
        if reply.kind == "sync" and reply.reason != "every":
            continue  # a forced connectivity sync: not an epoch boundary
        # every rank is here: an epoch ended (or the run did) with a full average
        hpcdl.allreduce(running, op="sum")
        elapsed = time.perf_counter() - start
        accuracy = evaluate(model, data.x_test, data.y_test, device)
        history.append(epoch_row(len(history) + 1, float(running[0] / running[1]), accuracy,
                                 float(running[1]), elapsed))
        bar.update(1)
        bar.epoch(history[-1])
        running.zero_()
        start = time.perf_counter()
        if reply.kind == "stop":
            break
    bar.close()
    stats = {"groups": 0, "forced_syncs": 0}
    if session.controller is not None:
        log = session.controller.log
        stats = {"groups": sum(r.kind == "group" for r in log),
                 "forced_syncs": sum(r.reason == "connect" for r in log),
                 "final_deadline_s": session.controller.deadline.value}
    return RunResult(history=history, test_accuracy=history[-1]["accuracy"],
                     writer=ctx.rank == 0,
                     settings={"group_size": args.group_size, "max_groups": session.max_groups},
                     fields={"preduce": stats})
