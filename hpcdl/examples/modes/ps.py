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

from .. import checkpointing
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
    # Before the parameter server starts: its first answer already holds restored shards.
    ck = checkpointing.make(args, PSCheckpoint, comm=ctx.comm)
    model = SmallCNN().to(device)
    ps = hdt.ParameterServer(model, torch.optim.Adam(model.parameters(), lr=args.lr),
                             mode=mode, staleness=args.staleness if mode == "ssp" else 0,
                             num_servers=args.num_servers, timeout=args.ps_timeout,
                             compression=None if args.compression == "none" else "fp16")
    first_worker = ps.roles.workers[0]
    history: list[dict[str, float]] = []
    wc = ps.worker_comm
    train = torch.utils.data.TensorDataset(data.x_train, data.y_train)
    sampler = None if ps.is_server else hdt.DistributedSampler(
        train, num_replicas=wc.size, rank=wc.rank, shuffle=True, seed=args.seed)
    ck.attach(ps.ps, sampler=sampler, extra={"history": history})
    if ps.is_server:
        info = {"server": ck.serve()}
    else:
        _train(args, device, data, model, ps, ck, train, sampler, history)
        info = {"worker_max_clock_gap": ps.max_clock_gap, "clock": ps.clock,
                "params_sha256": params_sha256(model)}   # the served model, pulled last
        ps.close()
    everyone = ctx.comm.allgather_object((info, history))
    history = everyone[first_worker][1]
    servers = [i["server"] for i, _ in everyone if "server" in i]
    gaps = [i["worker_max_clock_gap"] for i, _ in everyone if "worker_max_clock_gap" in i]
    fields = {"ps": {"mode": mode, "staleness": args.staleness if mode == "ssp" else 0,
                     "num_servers": len(servers), "workers": len(gaps),
                     "max_clock_gap": max(gaps), "server_updates": servers[0]["updates"],
                     "pushes_per_server": servers[0]["pushes"]}}
    fields.update(params_sha256=everyone[first_worker][0]["params_sha256"],
                  checkpoint=ck.summary())
    fields["ps"]["checkpoints"] = servers[0]["checkpoints"]
    return RunResult(history=history, test_accuracy=history[-1]["accuracy"],
                     writer=ctx.rank == first_worker, fields=fields,
                     settings={"workers": len(gaps), "servers": len(servers)})


def _train(args: argparse.Namespace, device: torch.device, data: Data, model: nn.Module,
           ps: hdt.ParameterServer, ck: PSCheckpoint, train: torch.utils.data.Dataset,
           sampler: hdt.DistributedSampler, history: list[dict[str, float]]) -> None:
    wc = ps.worker_comm
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, sampler=sampler)
    bar = Progress(args.epochs * len(loader), wc.rank == 0,
                   f"{wc.size} worker(s), {len(ps.roles.servers)} server(s)")
    bar.update(min(ck.step, args.epochs * len(loader)))
    for epoch in ck.epochs(1, args.epochs + 1):
        sampler.set_epoch(epoch)
        start = time.perf_counter()
        running = torch.zeros(2, dtype=torch.float64)
        for x, y in ck.batches(loader, carry={"running": running}):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            ps.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            ps.step()
            running[0] += float(loss.detach()) * len(y)
            running[1] += len(y)
            bar.update(1)
        hpcdl.allreduce(running, op="sum", comm=wc)   # also: every worker's pushes are in
        elapsed = time.perf_counter() - start
        ps.pull()                                     # so all score the same served model
        with ps.long_phase("evaluation"):             # the servers hear it is alive
            accuracy = evaluate(model, data.x_test, data.y_test, device, comm=wc)
        row = epoch_row(epoch, float(running[0] / running[1]), accuracy, float(running[1]),
                        elapsed)
        history.append(row)
        bar.epoch(row)
    bar.close()
