"""``--mode preduce``: dynamic P-Reduce model averaging (``--group-size P``).

Every rank steps its own Adam on its own shard, then averages its parameters
with the first ranks that are ready (at most P). A fast rank is never held back
by a slow one outside its group, so fast ranks take more of the steps: an
"epoch" is the controller's count of ``len(train) / batch_size`` steps from
all ranks together, closed by a full sync (all ranks average, then evaluate).

Checkpoints (``--checkpoint-dir``) are taken at those epoch-end full syncs, the one
point where every rank holds the same model (hpcdl/preduce/checkpoint.py);
``--checkpoint-every N`` counts steps over all ranks and is rounded up to the next
full sync. SIGUSR1 checkpoints at the next full sync and exits 0.

``--on-failure shrink`` under ULFM (``HPCDL_FT=1``): a dead rank is dropped (a group
with it is abandoned, the survivors shrink at a full sync, hpcdl/preduce/fault.py) and
the epochs go on among the survivors; a dead rank 0 (the controller) ends the job.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any, Iterator

import torch
from torch import nn

import hpcdl
import hpcdl.torch as hdt

from hpcdl.checkpoint import params_sha256
from hpcdl.comm.mpi import MPICommunicator
from hpcdl.preduce.checkpoint import PReduceCheckpoint
from hpcdl.survivors import Survivors
from hpcdl.ulfm import errors_return, ft_enabled

from .. import checkpointing
from . import failpoint
from ..common import Data, Progress, RunResult, SmallCNN, epoch_row, evaluate

__all__ = ["CHECKPOINTS", "add_arguments", "run", "batches", "Shard"]

CHECKPOINTS = True  # --checkpoint-dir/--resume are honoured, at the epochs' full syncs


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--mode preduce")
    g.add_argument("--group-size", type=int, default=2,
                   help="P: at most this many ranks average together (2 <= P <= ranks)")
    g.add_argument("--max-groups", type=int, default=0,
                   help="groups before a forced full sync if still disconnected; 0: default")


class Shard:
    """This rank's shard, reshuffled on every pass, forever (fast ranks pass it more
    often); it knows where it is (pass, batches taken of it) so a checkpoint can save it."""

    def __init__(self, data: Data, batch_size: int, seed: int) -> None:
        train = torch.utils.data.TensorDataset(data.x_train, data.y_train)
        self.sampler = hdt.DistributedSampler(train, shuffle=True, seed=seed)
        self.loader = torch.utils.data.DataLoader(train, batch_size=batch_size,
                                                  sampler=self.sampler)
        self.passes = 1   # the pass in progress (the sampler's epoch)
        self.taken = 0    # its batches handed out so far

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            self.sampler.set_epoch(self.passes)
            batches = iter(self.loader)
            for _ in range(self.taken):  # resumed mid-pass: skip what was trained on
                next(batches, None)
            for batch in batches:
                self.taken += 1
                yield batch
            self.passes, self.taken = self.passes + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"passes": self.passes, "taken": self.taken}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.passes, self.taken = int(state["passes"]), int(state["taken"])


def batches(data: Data, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's shard, reshuffled on every pass, forever (fast ranks pass it more often)."""
    yield from Shard(data, batch_size, seed)


def run(args: argparse.Namespace, ctx: hpcdl.Context, device: torch.device,
        data: Data) -> RunResult:
    if args.min_ranks > 1:
        raise SystemExit("--mode preduce: --min-ranks is not supported (it checkpoints for a "
                         "requeue, which --on-failure shrink does not do here)")
    if args.on_failure == "shrink" and args.checkpoint_dir:
        raise SystemExit("--mode preduce: --on-failure shrink with --checkpoint-dir is not "
                         "supported (a checkpoint needs every rank of the start)")
    model = SmallCNN().to(device)
    hdt.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(len(data.y_train) / args.batch_size)
    shard = Shard(data, args.batch_size, args.seed)
    history: list[dict[str, float]] = []
    ck = checkpointing.make(args, PReduceCheckpoint, comm=ctx.comm, model=model,
                            optimizer=opt, stream=shard, extra={"history": history})
    session = hpcdl.PReduce(args.group_size, total_steps=args.epochs * steps_per_epoch,
                            sync_every=steps_per_epoch, max_groups=args.max_groups or None,
                            state=ck.session_state, on_failure=args.on_failure)
    avg = hdt.PReduceAverager(model.parameters(), session)

    bar = Progress(args.epochs, ctx.rank == 0, f"{ctx.size} rank(s), P={args.group_size}",
                   unit="epoch")
    bar.update(len(history))
    running = torch.zeros(3, dtype=torch.float64)  # loss sum, samples, steps (this rank)
    # The epoch-end sums and evaluation: over the survivors in FT mode (on a Dup, which
    # a shrink may replace), over the job's communicator otherwise.
    live = Survivors(MPICommunicator(errors_return(ctx.comm.mpi.Dup())) if ft_enabled()
                     else ctx.comm, list(range(ctx.size)), args.on_failure)
    start = time.perf_counter()
    steps = 0
    for x, y in shard:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        steps += 1
        failpoint.maybe_die(ctx.rank, steps)
        running += torch.tensor([float(loss.detach()) * len(y), len(y), 1.0],
                                dtype=torch.float64)
        reply = avg()
        if reply.kind == "group":
            continue
        if reply.kind == "sync" and reply.reason != "every":
            continue  # a forced connectivity sync: not an epoch boundary
        # every rank is here: an epoch ended (or the run did) with a full average
        elapsed = time.perf_counter() - start

        def epoch_end(comm: MPICommunicator) -> tuple[torch.Tensor, float]:
            total = running.clone()      # run again after a shrink: the sum starts afresh
            hpcdl.allreduce(total, op="sum", comm=comm)
            with session.long_phase("evaluation"):   # the controller hears it is alive
                return total, evaluate(model, data.x_test, data.y_test, device, comm=comm)

        total, accuracy = live.run(epoch_end, f"epoch {len(history) + 1} end")
        history.append(epoch_row(len(history) + 1, float(total[0] / total[1]), accuracy,
                                 float(total[1]), elapsed))
        bar.update(1)
        bar.epoch(history[-1])
        running.zero_()
        if reply.kind == "stop":
            break
        ck.at_sync(session, reply)   # every rank holds the same model here
        start = time.perf_counter()
    bar.close()
    stats: dict[str, Any] = {"groups": 0, "forced_syncs": 0}
    failures: list[dict[str, Any]] = []
    if session.controller is not None:
        stats = {**ck.stats_since_start(session),
                 "final_deadline_s": session.controller.deadline.value,
                 "lost_ranks": sorted(live.lost),
                 # wall clock of the controller noticing each death, and of the survivors'
                 # full sync after it
                 "lost": [dict(f) for f in session.controller.failures]}
        failures = [{"step": f["step"], "lost_ranks": f["lost_ranks"],
                     "ranks_after": f["ranks_after"],
                     "recovery_s": (f["resumed"] - f["detected"]) if f["resumed"] else 0.0,
                     "steps_lost": 0} for f in session.controller.failures]
    # the final full sync (the "stop") left every rank with the same model: hash rank 0's
    return RunResult(history=history, test_accuracy=history[-1]["accuracy"],
                     writer=ctx.rank == 0,
                     settings={"group_size": args.group_size, "max_groups": session.max_groups},
                     fields={"preduce": stats, "params_sha256": params_sha256(model),
                             "checkpoint": ck.summary(), "failures": failures})
