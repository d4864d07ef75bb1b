"""Online tuning behind the DistributedOptimizer's buckets, the torch backend, and the
next job: the same schedule on every rank whether the call is direct, asynchronous (a
bucket hook) or a torch.distributed job, and a second real job that reuses the cache.

The candidates are two spies (the native and the chunked algorithm, counting their
calls), so a test sees that the trials ran through that path and that every rank ran
the same algorithms the same number of times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from hpcdl.collectives import online, registry
from hpcdl.collectives.chunked import chunked_allreduce
from hpcdl.collectives.native import native_allreduce
from hpcdl.torch import DistributedOptimizer

torch.set_num_threads(1)
SPIES = ["spy_native", "spy_chunked"]
CALLS: Counter = Counter()


def _spy(name, fn):
    def run(comm, buf, op):
        CALLS[name] += 1
        fn(comm, buf, op)
    return run


@pytest.fixture
def spies(monkeypatch):
    monkeypatch.setenv("HPCDL_TUNE", "on")
    registry.register_allreduce("spy_native", _spy("spy_native", native_allreduce))
    registry.register_allreduce("spy_chunked", _spy("spy_chunked", chunked_allreduce))
    CALLS.clear()
    yield CALLS
    for name in SPIES:
        registry.ALLREDUCE.pop(name, None)
    registry.invalidate_plans()


def _agreed(comm, counts: Counter, history: dict) -> list:
    return comm.allgather_object((sorted(counts.items()), history))


@pytest.mark.mpi(min_size=2)
def test_distributed_optimizer_buckets_follow_the_schedule(ctx, spies):
    """24 steps of a model in 2+ buckets: the async bucket allreduces run the trials and
    then the agreed winner, and training equals one process on the full batch."""
    comm = ctx.comm.split(0, ctx.rank)
    tuner = online.install(comm, candidates=SPIES, use_cache=False)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 4))
    ref = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 4))
    ref.load_state_dict(model.state_dict())
    opt = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.05),
                               named_parameters=model.named_parameters(),
                               fusion_threshold_mb=0.005, comm=comm)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(3)
    per_rank = 4
    for _ in range(24):
        x = torch.randn(per_rank * comm.size, 64, generator=g)
        y = torch.randn(per_rank * comm.size, 4, generator=g)
        mine = slice(comm.rank * per_rank, (comm.rank + 1) * per_rank)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[mine]), y[mine]).backward()
        opt.step()
        ref_opt.zero_grad()
        torch.nn.functional.mse_loss(ref(x), y).backward()
        ref_opt.step()
    report = tuner.report()
    history = {k: v["history"] for k, v in report.items()}
    seen = _agreed(comm, spies, history)
    diff = max(float((p - q).detach().abs().max())
               for p, q in zip(model.parameters(), ref.parameters()))
    assert all(s == seen[0] for s in seen), seen
    # 2 candidates x 10 rounds per class (20 more if a drift check asked for a re-trial)
    assert len(report) >= 2 and all(v["history"] and v["trial_calls"] in (20, 40, 60)
                                    for v in report.values()), report
    assert min(spies.values()) >= 10 * len(report), spies
    assert diff < 1e-5


@pytest.mark.mpi(min_size=2)
def test_torch_backend_allreduce_follows_the_schedule(ctx, spies, monkeypatch):
    """dist.all_reduce on an "hpcdl" group: its jobs run hpcdl's auto, so they tune."""
    import torch.distributed as dist

    from helpers.torch_backend_util import rank_data, world

    world()
    monkeypatch.setenv("HPCDL_TUNE_CANDIDATES", ",".join(SPIES))
    group = dist.new_group(backend="hpcdl")  # a fresh communicator: a fresh tuner
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    bad = []
    for i in range(25):
        ts = [rank_data(100 + i, r, (3000,), torch.float32) for r in range(size)]
        t = ts[rank].clone()
        dist.all_reduce(t, group=group)
        want = np.sum([x.numpy().astype(np.float64) for x in ts], axis=0)
        if not np.allclose(t.numpy(), want, rtol=1e-5, atol=1e-5):
            bad.append(i)
    seen = _agreed(ctx.comm, spies, {})
    assert not bad and all(s == seen[0] for s in seen), (bad, seen)
    # 2 candidates x 10 rounds of trials, then 5 calls of the winner
    assert sum(spies.values()) == 25 and min(spies.values()) >= 10, spies


@pytest.mark.spawns
def test_a_second_job_reuses_the_first_jobs_choices(tmp_path):
    """Two real 2-rank jobs with one cache folder: the first runs trials and saves, the
    second runs none and uses the same winners."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import json, sys, numpy as np, hpcdl
        from hpcdl.collectives import online
        ctx = hpcdl.init()
        for n in (1000, 300_000):
            for i in range(45):
                x = np.full(n, float(ctx.rank + 1))
                hpcdl.allreduce(x)
                assert np.all(x == ctx.size * (ctx.size + 1) / 2), (ctx.rank, i)
        if ctx.rank == 0:
            report = online.existing(ctx.comm).report()
            print("REPORT " + json.dumps(report))
    """))
    exe = Path(sys.executable).with_name("hpcdl")
    env = dict(os.environ, HPCDL_TUNE="on", HPCDL_CACHE_DIR=str(tmp_path / "cache"))
    reports = []
    for _ in range(2):
        done = subprocess.run([str(exe), "launch", "-n", "2", "--", "python", str(script)],
                              env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stdout + done.stderr
        line = next(l for l in done.stdout.splitlines() if l.startswith("REPORT "))
        reports.append(json.loads(line[len("REPORT "):]))
    first, second = reports
    assert len(first) == 2 and set(first) == set(second)
    for key, entry in first.items():
        assert entry["source"] == "trials" and entry["trial_calls"] > 0, first
        again = second[key]
        assert again["source"] == "cache" and again["trial_calls"] == 0, second
        assert again["algorithm"] == entry["algorithm"], (first, second)
    assert list((tmp_path / "cache").glob("online-*.json"))
