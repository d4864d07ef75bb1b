"""Jobs with one rank stalled in each mode: ``python tests/jobs/wait_jobs.py KIND SECONDS``.

The stalled rank prints ``rank R sleeping since T`` and sleeps SECONDS (a real sleep:
no MPI call, its process alive) where the others wait for it:

* ``ps-sync``: 3 ranks, server rank 2; worker rank 1 sleeps before its 4th push.
* ``preduce``: 3 ranks, P=2, a full sync every 6 steps; rank 2 sleeps at its 3rd step.
* ``pipeline``: 2 ranks, 2 stages over the hpcdl torch backend; stage 1 sleeps before
  its 3rd step while stage 0 waits for its gradients.
* ``torch-p2p``: 2 ranks, ``torch.distributed`` over hpcdl; rank 0 receives from rank
  1, which sleeps before sending.
* ``pipeline-timeout`` / ``torch-timeout``: as ``torch-p2p`` with the watchdog off,
  the group's timeout set by ``HPCDL_PIPELINE_TIMEOUT`` (hpcdl.pipeline's
  init_process_group) or ``init_process_group(timeout=3 s)``: rank 0's receive must
  raise within it.
* ``ps-eval`` / ``preduce-eval``: the peers' timeout is 4 s (``setup(timeout=)``,
  ``PReduce(timeout=)``); at an epoch's end rank 1 "evaluates" for SECONDS inside
  ``long_phase`` (the others for 0.5 s, then wait for it), then the run ends normally.
* ``ps-stuck`` / ``preduce-stuck``: as ``ps-sync`` / ``preduce`` with that 4 s timeout
  (and the watchdog off): the stalled rank is not in a long phase, so the job ends.
"""

from __future__ import annotations

import datetime
import os
import sys
import time

import numpy as np

import hpcdl
import hpcdl.ps


def stall(rank: int, seconds: float) -> None:
    print(f"rank {rank} sleeping since {time.time()}", flush=True)
    time.sleep(seconds)


def evaluation(ctx: hpcdl.Context, phase: object, seconds: float) -> None:
    with phase:   # a long_phase: the peers hear heartbeats
        time.sleep(seconds if ctx.rank == 1 else 0.5)


def ps_job(ctx: hpcdl.Context, seconds: float, how: str) -> None:
    rng = np.random.default_rng(ctx.rank)
    params = {"w": rng.standard_normal((8, 4)).astype(np.float32)}
    ps = hpcdl.ps.setup(params, optimizer=hpcdl.ps.SGD(lr=0.1), mode="sync",
                        timeout=120.0 if how == "sync" else 4.0)
    if ps.is_server:
        ps.serve()
    else:
        for step in range(6):
            if how != "eval" and ctx.rank == 1 and step == 3:
                stall(ctx.rank, seconds)
            ps.push_pull({"w": np.full((8, 4), 0.01 * (ctx.rank + 1), np.float32)})
            if how == "eval" and step == 2:
                evaluation(ctx, ps.long_phase("evaluation"), seconds)
        ps.close()


def preduce_job(ctx: hpcdl.Context, seconds: float, how: str) -> None:
    x = np.full(64, float(ctx.rank), np.float64)
    session = hpcdl.PReduce(2, total_steps=18, sync_every=6,
                            timeout=600.0 if how == "sync" else 4.0)
    for step in range(100):
        if how != "eval" and ctx.rank == 2 and step == 2:
            stall(ctx.rank, seconds)
        reply = session(x)
        if reply.kind == "stop":
            break
        if how == "eval" and reply.kind == "sync" and reply.reason == "every":
            evaluation(ctx, session.long_phase("evaluation"), seconds)
    session.close(x)


def pipeline_job(ctx: hpcdl.Context, seconds: float) -> None:
    import torch
    from torch import nn

    import hpcdl.pipeline as hp

    torch.manual_seed(0)
    grid = hp.Grid(stages=2)
    mod = nn.Linear(4, 4)
    pipe = hp.Pipeline(mod, grid, 2, nn.functional.mse_loss, schedule="gpipe")
    for step in range(5):
        if grid.stage == 1 and step == 2:
            stall(ctx.rank, seconds)
        pipe.step(torch.randn(4, 4), torch.randn(4, 4))


def torch_p2p_job(ctx: hpcdl.Context, seconds: float, kind: str) -> None:
    import torch
    import torch.distributed as dist

    if kind == "pipeline-timeout":
        from hpcdl.pipeline.process_group import init_process_group

        init_process_group("hpcdl")
    elif kind == "torch-timeout":
        import hpcdl.torch.backend as backend

        backend.init_process_group(timeout=datetime.timedelta(seconds=3))
    else:
        import hpcdl.torch.backend as backend

        backend.init_process_group()
    t = torch.zeros(16)
    if ctx.rank == 0:
        start = time.monotonic()
        try:
            dist.recv(t, src=1)
        except Exception as exc:  # noqa: BLE001 - the test reads the message and the time
            print(f"rank 0 gave up after {time.monotonic() - start:.1f} s: {exc}", flush=True)
            raise
    elif ctx.rank == 1:
        stall(ctx.rank, seconds)
        dist.send(torch.ones(16), dst=0)


def main() -> None:
    kind, seconds = sys.argv[1], float(sys.argv[2])
    ctx = hpcdl.init()
    if kind.startswith("ps-"):
        ps_job(ctx, seconds, kind[3:])
    elif kind.startswith("preduce"):
        preduce_job(ctx, seconds, kind[8:] or "sync")
    elif kind == "pipeline":
        pipeline_job(ctx, seconds)
    else:
        torch_p2p_job(ctx, seconds, kind)
    hpcdl.barrier()
    print(f"rank {ctx.rank} finished {kind} (pid {os.getpid()})", flush=True)


if __name__ == "__main__":
    main()
