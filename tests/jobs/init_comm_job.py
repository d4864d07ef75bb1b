"""A job over a communicator handed to ``init`` (tests/test_init_comm_jobs.py starts it).

    hpcdl launch -n N -- python tests/jobs/init_comm_job.py API SCENARIO

API: ``hpcdl`` (``hpcdl.init(MPI.COMM_WORLD.Dup())``) or ``horovod``
(``hvd.init(comm=MPI.COMM_WORLD.Dup())``). SCENARIO:

* ``raise``: rank 1 raises while the others wait in an allreduce (the abort hook
  must end the job, naming rank 1 and the exception);
* ``stall``: rank 1 sleeps 120 s while the others wait (with ``HPCDL_TIMEOUT`` set,
  the watchdog must end the job naming rank 1);
* ``async_exit``: asynchronous allreduces nobody waited for at exit (the exit handler
  must finish them before MPI is finalized).
"""

from __future__ import annotations

import sys
import time

import numpy as np
from mpi4py import MPI

import hpcdl

api, scenario = sys.argv[1], sys.argv[2]
given = MPI.COMM_WORLD.Dup()
if api == "horovod":
    import hpcdl.horovod.torch as hvd
    from hpcdl.horovod.torch.basics import context

    hvd.init(comm=given)
    ctx = context()
else:
    ctx = hpcdl.init(given)
assert not hpcdl.runtime.is_initialized()  # no default context: only the given one
x = np.ones(4)
hpcdl.allreduce(x, comm=ctx.comm)
if scenario == "raise":
    if ctx.rank == 1:
        print(f"raising at {time.time():.3f}", flush=True)
        raise RuntimeError("rank one failed on purpose after init(comm)")
    hpcdl.allreduce(x, comm=ctx.comm)
elif scenario == "stall":
    if ctx.rank == 1:
        print(f"stalling at {time.time():.3f}", flush=True)
        time.sleep(120)
    hpcdl.allreduce(x, comm=ctx.comm)
elif scenario == "async_exit":
    handles = [hpcdl.allreduce(np.ones(1 << 20), comm=ctx.comm, async_op=True)
               for _ in range(60)]
else:
    raise SystemExit(f"unknown scenario {scenario!r}")
print(f"finished rank {ctx.rank}", flush=True)
