"""A parameter server job in which one rank dies (SIGKILL) mid-training; run by
test_ps_jobs.py under its own mpiexec. ``argv[1]``: ``worker`` or ``server``."""

import os
import signal
import sys
import threading

import numpy as np

import hpcdl
import hpcdl.ps as ps

victim_kind = sys.argv[1]
ctx = hpcdl.init()
p = ps.setup({"w": np.zeros(100, np.float32)}, optimizer=ps.SGD(lr=0.1), timeout=60)
victim = p.roles.servers[0] if victim_kind == "server" else p.roles.workers[-1]
if ctx.rank == victim:
    print(f"rank {ctx.rank} ({victim_kind}) dies now", flush=True)
    threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
if p.is_server:
    p.serve()
else:
    for step in range(100000):
        p.push_pull({"w": np.ones(100, np.float32)})
    p.close()
