"""5 ranks, 2 servers, 3 workers, ssp(1), one slow worker: run by test_ps_jobs.py.
Prints one line per rank; exits 0 only if the model converged and the bound held."""

import time

import numpy as np

import hpcdl
import hpcdl.ps as ps

ctx = hpcdl.init()
w_true = np.linspace(-1, 1, 50).astype(np.float32)
p = ps.setup({"w": np.zeros(50, np.float32), "b": np.zeros(1, np.float32)},
             optimizer=ps.SGD(lr=0.05, momentum=0.5), mode="ssp", staleness=1, num_servers=2,
             chunk_elems=8, timeout=60)
if p.is_server:
    stats = p.serve()
    assert stats["max_clock_gap"] <= 1, stats
    print(f"server rank {ctx.rank}: {stats['updates']} updates, max gap "
          f"{stats['max_clock_gap']}", flush=True)
else:
    wc = p.roles.group
    params = p.params
    for step in range(30):
        rng = np.random.default_rng(100 * step + wc.rank)
        x = rng.standard_normal((32, 50)).astype(np.float32)
        err = x @ params["w"] + params["b"] - x @ w_true
        if wc.rank == 0:
            time.sleep(0.01)
        params = p.push_pull({"w": x.T @ err / 32, "b": np.array([err.mean()], np.float32)})
    wc.barrier()
    params = p.pull()
    p.close()
    loss = float(np.mean((x @ params["w"] + params["b"] - x @ w_true) ** 2))
    assert loss < 0.05 and p.max_clock_gap <= 1, (loss, p.gaps)
    print(f"worker rank {ctx.rank}: loss {loss:.4f}, max gap {p.max_clock_gap}", flush=True)
