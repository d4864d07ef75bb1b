"""``--mode allreduce --on-failure shrink``: data parallel that survives dead ranks.

The loop of ``allreduce.py`` inside :func:`hpcdl.elastic.run`: the state
(model, optimizer, sampler position, RNG, step, the epoch's running loss) is
committed in memory after every step; when a rank dies every survivor gets
:class:`~hpcdl.errors.ProcessFailed`, shrinks, restores the newest commit,
rebuilds the DistributedOptimizer over the survivors and goes on with the rest
of the epoch cut over the new size (:class:`hpcdl.elastic.ElasticSampler`).
Each rank's loss is weighted by its share of the step's global batch, so the
averaged gradient is the mean over the step's samples however they were cut.

Below ``--min-ranks`` survivors the job checkpoints (with ``--checkpoint-dir``)
and exits with :data:`EXIT_REQUEUE` so the batch system can requeue it
(``--resume`` continues, at whatever size it gets).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn

import hpcdl
import hpcdl.elastic as elastic
import hpcdl.torch as hdt

from .. import checkpointing
from .. import fault_injection as inject
from ..common import Data, Progress, RunResult, SmallCNN, epoch_row, evaluate, make_compression

__all__ = ["EXIT_REQUEUE", "run"]

EXIT_REQUEUE = 75
"""Exit status below ``--min-ranks`` (EX_TEMPFAIL: try again later; docs/fault-tolerance.md)."""


def run(args: argparse.Namespace, ctx: hpcdl.Context, device: torch.device,
        data: Data) -> RunResult:
    model = SmallCNN().to(device)
    hdt.broadcast_parameters(model.state_dict(), root_rank=0)
    inner = torch.optim.Adam(model.parameters(), lr=args.lr)

    def wrap(comm: object) -> hdt.DistributedOptimizer:
        return hdt.DistributedOptimizer(inner, named_parameters=model.named_parameters(),
                                        compression=make_compression(args.compression),
                                        fusion_threshold_mb=args.fusion_mb,
                                        algorithm=args.algorithm, comm=comm)

    opt = wrap(ctx.comm)
    hdt.broadcast_optimizer_state(opt, root_rank=0)
    n_train = len(data.y_train)
    sampler = elastic.ElasticSampler(n_train, args.batch_size, ctx.comm, seed=args.seed)
    history: list[dict[str, float]] = []
    ck = checkpointing.make(args, comm=ctx.comm, model=model, optimizer=opt, sampler=sampler,
                            extra={"history": history})
    sampler.set_epoch(ck.epoch)
    sampler.position = ck.position
    state = elastic.State(model=model, optimizer=opt, sampler=sampler, epoch=ck.epoch,
                          step=ck.step, history=list(ck.extra["history"]), loss_sum=0.0, seen=0,
                          t_epoch=0.0)

    def save() -> None:
        ck.step, ck.epoch, ck.position = state.step, state.epoch, sampler.position
        ck.extra["history"] = state.history
        ck.save()

    def rebuild(new: hpcdl.Context) -> None:
        state.optimizer.remove_hooks()      # the old wrapper reduces over the dead ranks
        state.optimizer = wrap(new.comm)
        ck.comm = new.comm                  # checkpoints are collective over the survivors
        if ck.manager is not None:
            ck.manager.comm = new.comm
            if new.rank == 0:   # a save the failure interrupted: never a resume candidate
                for tmp in Path(ck.manager.directory).glob("*.tmp"):
                    shutil.rmtree(tmp, ignore_errors=True)

    state.on_reset(rebuild)
    bar = Progress(args.epochs * sampler.steps_left(), ctx.rank == 0, f"{ctx.size} rank(s)")

    @elastic.run(min_ranks=args.min_ranks)
    def train(state: elastic.State) -> None:
        while state.epoch <= args.epochs:
            comm = hpcdl.get_context().comm
            if sampler.epoch != state.epoch:
                sampler.set_epoch(state.epoch)
            start = time.perf_counter()
            for idx in sampler:
                step = state.step + 1
                inject.record_samples(len(state.failures), state.epoch, step, idx)
                weight = comm.size / sampler.step_samples
                if not idx:   # fewer samples than ranks: a zero-weight pass keeps the hooks
                    idx, weight = [0], 0.0
                x, y = data.x_train[idx].to(device), data.y_train[idx].to(device)
                state.optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
                inject.kill_point(step, "backward", model)
                (loss * weight).backward()
                inject.kill_point(step, "allreduce")
                state.optimizer.step()
                state.step = step
                if weight:
                    state.loss_sum += float(loss.detach())
                    state.seen += len(idx)
                state.t_epoch += time.perf_counter() - start
                start = time.perf_counter()
                state.commit()
                inject.record_commit(len(state.failures), state.epoch, step)
                bar.update(1)
                signalled = ck.signal is not None and ck.signal.agreed(comm)
                if signalled or (ck.every and step % ck.every == 0):
                    inject.watch_checkpoint(step, args.checkpoint_dir)
                    save()
                if signalled:
                    ck._exit(f"at step {step} on {ck.signal.name}")
            sums = torch.tensor([state.loss_sum, float(state.seen)], dtype=torch.float64)
            hpcdl.allreduce(sums, op="sum", comm=comm)
            accuracy = evaluate(model, data.x_test, data.y_test, device, comm=comm)
            row = epoch_row(state.epoch, float(sums[0] / max(sums[1], 1.0)), accuracy,
                            float(sums[1]), state.t_epoch + time.perf_counter() - start)
            state.history = [*state.history, row]
            bar.epoch(row)
            state.epoch += 1
            state.loss_sum, state.seen, state.t_epoch = 0.0, 0, 0.0
            state.commit()

    try:
        train(state)
    except elastic.MinRanksReached as low:
        now = hpcdl.get_context()
        if ck.manager is not None:
            save()
        if now.rank == 0:
            where = (f"checkpointed step {state.step} into {args.checkpoint_dir}; rerun with "
                     "--resume" if ck.manager is not None else "no --checkpoint-dir: nothing saved")
            print(f"hpcdl: {low}; {where}; exiting with status {EXIT_REQUEUE} for a requeue",
                  file=sys.stderr, flush=True)
        sys.exit(EXIT_REQUEUE)
    bar.close()
    now = hpcdl.get_context()
    history = state.history
    final = history[-1]["accuracy"] if history else evaluate(model, data.x_test, data.y_test,
                                                               device, comm=now.comm)
    return RunResult(history=history, test_accuracy=final, writer=now.rank == 0,
                     settings={"buckets": len(state.optimizer.buckets), "on_failure": "shrink",
                               "ranks_at_start": ctx.size},
                     fields={**checkpointing.fields(ck, model), "ranks_at_end": now.size,
                             "failures": state.failures})
