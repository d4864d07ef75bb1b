"""Jobs that tests/test_watchdog.py launches: ``python tests/jobs/watchdog_jobs.py KIND SECONDS``.

* ``collective``: rank 2 (or the last rank) sleeps SECONDS before the 4th allreduce.
* ``p2p``: rank 0 sleeps SECONDS before sending to rank 1, which waits in a receive.
* ``mismatch``: after 3 allreduces rank 1 broadcasts while the others allreduce.
* ``default``: prints the watchdog's timeout and the communicator's type, then ends.
* ``many``: as ``collective``, after making 150 communicators (each rank's watchdog
  state then lists them all, past MPI's eager size), with the last rank sleeping.
"""

import sys
import time

import numpy as np

import hpcdl
import hpcdl.watchdog


def main() -> None:
    kind, seconds = sys.argv[1], float(sys.argv[2])
    ctx = hpcdl.init()
    x = np.full(1024, ctx.rank + 1, np.float32)
    keep = []
    if kind == "many":
        # Dups of the watched communicator are watched too: 150 of them, each used once.
        for _ in range(150):
            keep.append(ctx.comm.mpi.Dup())
            keep[-1].Barrier()
    if kind in ("collective", "many"):
        late = min(2, ctx.size - 1) if kind == "collective" else ctx.size - 1
        for _ in range(3):
            hpcdl.allreduce(x)
            x[:] = ctx.rank + 1
        if ctx.rank == late:
            print(f"rank {ctx.rank} sleeping since {time.time()}", flush=True)
            time.sleep(seconds)
        hpcdl.allreduce(x)
        expected = ctx.size * (ctx.size + 1) / 2
        assert np.all(x == expected), (x[:4], expected)
    elif kind == "mismatch":
        for _ in range(3):
            hpcdl.allreduce(x)
        if ctx.rank == 1:
            hpcdl.broadcast(x, root=0)
        else:
            hpcdl.allreduce(x)
    elif kind == "default":
        print(f"rank {ctx.rank} watchdog {hpcdl.watchdog.active():g} "
              f"{type(ctx.comm.mpi).__name__}", flush=True)
    elif kind == "p2p":
        if ctx.rank == 0:
            time.sleep(seconds)
            ctx.comm.send(x, 1, tag=3)
        elif ctx.rank == 1:
            ctx.comm.recv(x, 0, tag=3)
            assert np.all(x == 1)
        hpcdl.barrier()
    print(f"rank {ctx.rank} finished {kind}", flush=True)


if __name__ == "__main__":
    main()
