"""``--mode ps-sync | ps-async | ssp``: a parameter server (hpcdl.ps) trains the model.

The last ``--num-servers`` ranks serve (they hold the model and apply Adam);
the other ranks are workers: each computes gradients on its share of every
epoch and pushes them, then pulls the parameters of the next clock. At each
epoch's end the workers meet, pull the servers' current parameters and score
them, so the reported accuracy is that of the served model.

With ``--checkpoint-dir`` the servers' shards, Adam state and clocks and the workers'
position are saved (hpcdl/ps/checkpoint.py); ``params_sha256`` hashes the served
model the workers pull at the end.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import hpcdl
import hpcdl.torch as hdt
from hpcdl.checkpoint import params_sha256
from hpcdl.ps.checkpoint import PSCheckpoint
from hpcdl.survivors import Survivors
from hpcdl.ulfm import errors_return, ft_enabled

from .. import checkpointing
from . import failpoint
from ..common import Data, Progress, RunResult, SmallCNN, epoch_row, evaluate

__all__ = ["CHECKPOINTS", "add_arguments", "run", "PS_MODES"]

CHECKPOINTS = True  # --checkpoint-dir/--resume are honoured (hpcdl/ps/checkpoint.py)

PS_MODES = {"ps-sync": "sync", "ps-async": "async", "ssp": "ssp"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--mode ps-sync | ps-async | ssp (parameter server)")
    g.add_argument("--staleness", type=int, default=2,
                   help="ssp: a worker may run this many clocks ahead of the slowest")
    g.add_argument("--num-servers", type=int, default=1,
                   help="ranks that serve (the last ones); the others train")
    g.add_argument("--ps-timeout", type=float, default=120.0,
                   help="seconds a server or worker waits for a peer before ending the job")


def run(args: argparse.Namespace, ctx: hpcdl.Context, device: torch.device,
        data: Data) -> RunResult:
    mode = PS_MODES[args.mode]
    if ctx.size < 2:
        raise SystemExit(f"--mode {args.mode} needs at least 2 ranks (servers + workers); "
                         "launch with hpcdl launch -n 2 or more")
    if args.min_ranks > 1:
        raise SystemExit(f"--mode {args.mode}: --min-ranks is not supported (it checkpoints "
                         "for a requeue, which --on-failure shrink does not do here)")
    if args.on_failure == "shrink" and args.checkpoint_dir:
        raise SystemExit(f"--mode {args.mode}: --on-failure shrink with --checkpoint-dir is not "
                         "supported (a checkpoint needs every worker of the start)")
    # Before the parameter server starts: its first answer already holds restored shards.
    ck = checkpointing.make(args, PSCheckpoint, comm=ctx.comm)
    model = SmallCNN().to(device)
    ps = hdt.ParameterServer(model, torch.optim.Adam(model.parameters(), lr=args.lr),
                             mode=mode, staleness=args.staleness if mode == "ssp" else 0,
                             num_servers=args.num_servers, timeout=args.ps_timeout,
                             compression=None if args.compression == "none" else "fp16",
                             on_failure=args.on_failure)
    first_worker = ps.roles.workers[0]
    history: list[dict[str, float]] = []
    wc = ps.worker_comm
    train = torch.utils.data.TensorDataset(data.x_train, data.y_train)
    sampler = None if ps.is_server else hdt.DistributedSampler(
        train, num_replicas=wc.size, rank=wc.rank, shuffle=True, seed=args.seed)
    ck.attach(ps.ps, sampler=sampler, extra={"history": history})
    if ps.is_server:
        failpoint.arm(ctx.rank, lambda: ps.ps.stats["updates"])   # tests only
        info = {"server": ck.serve()}
    else:
        group = Survivors(wc, list(ps.roles.workers), args.on_failure)
        _train(args, device, data, model, ps, ck, train, sampler, history, group)
        info = {"worker_max_clock_gap": ps.max_clock_gap, "clock": ps.clock,
                "params_sha256": params_sha256(model),   # the served model, pulled last
                "lost": sorted(set(group.lost) | set(ps.ps.lost_peers)),
                "shrinks": group.shrinks}
        ps.close()
    everyone = _gather_living(ctx, (ctx.rank, info, history))
    writer = min(r for r, i, _ in everyone if "server" not in i)   # the first living worker
    by_rank = {r: (i, h) for r, i, h in everyone}
    history = by_rank[writer][1]
    servers = [i["server"] for _, i, _ in everyone if "server" in i]
    gaps = [i["worker_max_clock_gap"] for _, i, _ in everyone if "worker_max_clock_gap" in i]
    fields = {"ps": {"mode": mode, "staleness": args.staleness if mode == "ssp" else 0,
                     "num_servers": len(servers), "workers": len(gaps),
                     "max_clock_gap": max(gaps), "server_updates": servers[0]["updates"],
                     "pushes_per_server": servers[0]["pushes"],
                     "lost_workers": servers[0]["lost_workers"],
                     "lost_by_rank": {str(r): sorted(set(i.get("lost", [])) |
                                                     {x["rank"] for x in
                                                      i.get("server", {}).get("lost_workers",
                                                                              [])})
                                      for r, i, _ in everyone}}}
    fields.update(params_sha256=by_rank[writer][0]["params_sha256"],
                  checkpoint=ck.summary(),
                  failures=_failures(servers[0]["lost_workers"], by_rank[writer][0]["shrinks"],
                                     ctx.size))
    fields["ps"]["checkpoints"] = servers[0]["checkpoints"]
    return RunResult(history=history, test_accuracy=history[-1]["accuracy"],
                     writer=ctx.rank == writer, fields=fields,
                     settings={"workers": len(gaps), "servers": len(servers),
                               "first_worker": first_worker})


def _gather_living(ctx: hpcdl.Context, item: object) -> list:
    """``allgather_object`` over the ranks still alive (FT mode: over a shrunk copy of
    the job's communicator, since a dead rank cannot take part)."""
    if not ft_enabled():
        return ctx.comm.allgather_object(item)
    live = errors_return(ctx.comm.mpi.Shrink())   # collective over the survivors only
    try:
        return live.allgather(item)
    finally:
        live.Free()


def _failures(lost: list[dict], shrinks: list[dict], size: int) -> list[dict]:
    """metrics.json ``failures`` (docs/fault-tolerance.md): one entry per dead worker, as
    the servers saw it. ``step``: the clocks it had pushed; ``recovery_s``: from the
    server noticing the death to its next applied update; ``steps_lost``: 0 (the servers
    keep every update; the dead worker's unpushed batches of that epoch go untrained)."""
    out = []
    for n, entry in enumerate(lost, start=1):
        resumed = entry.get("resumed")
        out.append({"step": int(entry["clock"]), "lost_ranks": [int(entry["rank"])],
                    "ranks_after": size - n,
                    "recovery_s": float(resumed - entry["detected"]) if resumed else 0.0,
                    "steps_lost": 0})
    return out


def _train(args: argparse.Namespace, device: torch.device, data: Data, model: nn.Module,
           ps: hdt.ParameterServer, ck: PSCheckpoint, train: torch.utils.data.Dataset,
           sampler: hdt.DistributedSampler, history: list[dict[str, float]],
           group: Survivors) -> None:
    wc = ps.worker_comm
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, sampler=sampler)
    bar = Progress(args.epochs * len(loader), wc.rank == 0,
                   f"{wc.size} worker(s), {len(ps.roles.servers)} server(s)")
    bar.update(min(ck.step, args.epochs * len(loader)))
    shrink = args.on_failure == "shrink"     # checkpoints are refused with it: plain loops
    me = ps.roles.rank
    for epoch in ck.epochs(1, args.epochs + 1):
        if group.comm.size != sampler.num_replicas:   # workers were lost: re-shard
            sampler = hdt.DistributedSampler(train, num_replicas=group.comm.size,
                                             rank=group.comm.rank, shuffle=True, seed=args.seed)
            loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size,
                                                 sampler=sampler)
        sampler.set_epoch(epoch)
        start = time.perf_counter()
        running = torch.zeros(2, dtype=torch.float64)
        for x, y in (loader if shrink else ck.batches(loader, carry={"running": running})):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            ps.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            ps.step()
            failpoint.maybe_die(me, ps.clock)
            running[0] += float(loss.detach()) * len(y)
            running[1] += len(y)
            bar.update(1)

        def epoch_end(comm: hpcdl.comm.mpi.MPICommunicator) -> tuple[torch.Tensor, float]:
            total = running.clone()      # run again after a shrink: the sum starts afresh
            hpcdl.allreduce(total, op="sum", comm=comm)   # also: every worker's pushes are in
            ps.pull()                                     # so all score the same served model
            with ps.long_phase("evaluation"):             # the servers hear it is alive
                return total, evaluate(model, data.x_test, data.y_test, device, comm=comm)

        elapsed = time.perf_counter() - start
        running, accuracy = group.run(epoch_end, f"epoch {epoch} end")
        row = epoch_row(epoch, float(running[0] / running[1]), accuracy, float(running[1]),
                        elapsed)
        history.append(row)
        bar.epoch(row)
    bar.close()
