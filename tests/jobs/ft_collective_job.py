"""Under ``hpcdl launch --ft``: the last rank dies (SIGKILL); every algorithm, and the torch
backend, must raise ProcessFailed on every survivor (not hang, not abort the job).

    python ft_collective_job.py handled|unhandled [SLEEP_S]

``handled``: each algorithm runs on its own communicator, made (and used once) while
all ranks lived, so each must notice the death itself; then the survivors shrink,
check an allreduce over the survivors against NumPy, sleep ``SLEEP_S`` (longer than a
watchdog timeout the test sets: the watchdog must not take the death for a stall)
rebuild the torch process group over the survivors and print ``OK rank R ...``. ``unhandled``: the ProcessFailed is left uncaught, so the
job must end non-zero, naming the rank.
"""

import importlib
import os
import signal
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

import hpcdl
import hpcdl.elastic
from hpcdl.errors import ProcessFailed

ALGORITHMS = ("native", "chunked", "ring", "tree", "hierarchical", "auto")


def data(rank: int) -> np.ndarray:
    return np.random.default_rng(rank).random(1 << 14).astype(np.float64) + 1.0


def main() -> None:
    how = sys.argv[1]
    sleep_s = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    ctx = hpcdl.init()
    importlib.import_module("hpcdl.torch.backend")   # registers "hpcdl"
    dist.init_process_group("hpcdl")
    victim = ctx.size - 1
    comms = {a: hpcdl.init(hpcdl.get_context().comm.mpi).comm for a in ALGORITHMS}
    for a, comm in comms.items():   # each works, and builds its node layout, while all live
        hpcdl.allreduce(data(ctx.rank), algorithm=a, comm=comm)
    dist.all_reduce(torch.ones(4))
    if ctx.rank == victim:
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "unhandled":
        for _ in range(50):
            hpcdl.allreduce(data(ctx.rank), algorithm="ring", comm=comms["ring"])
    seen = {}
    for a, comm in [*comms.items(), ("torch", None)]:
        try:
            t0 = time.monotonic()
            for _ in range(50):   # the death may surface only in a later call
                if comm is None:
                    dist.all_reduce(torch.ones(1 << 12))
                else:
                    hpcdl.allreduce(data(ctx.rank), algorithm=a, comm=comm)
            seen[a] = "no error"
        except ProcessFailed as exc:
            seen[a] = f"ProcessFailed({exc.failed}) in {time.monotonic() - t0:.2f}s"
    new = hpcdl.elastic.shrink()
    buf = data(ctx.rank)
    hpcdl.allreduce(buf, comm=new.comm)
    ref = sum(data(r) for r in range(ctx.size) if r != victim)
    good = np.allclose(buf, ref, rtol=1e-12)
    # the torch process group spans the dead rank: rebuilt over the survivors
    dist.destroy_process_group()
    dist.init_process_group("hpcdl")
    t = torch.ones(3)
    dist.all_reduce(t)
    good = good and dist.get_world_size() == new.size and float(t[0]) == new.size
    time.sleep(sleep_s)
    hpcdl.allreduce(np.ones(1), comm=new.comm)   # still alive together after the sleep
    print(f"{'OK' if good and all(v != 'no error' for v in seen.values()) else 'BAD'} rank "
          f"{ctx.rank} size_after={new.size} reference={'match' if good else 'DIFFERS'} "
          + " ".join(f"{k}={v}" for k, v in seen.items()), flush=True)


main()
