"""Fault-tolerant mode (ULFM) and hpcdl.elastic's pieces (docs/fault-tolerance.md).

Serial: ``hpcdl launch --ft``, the sampler's re-sharding, State commit/restore.
Spawned under ``hpcdl launch --ft`` (``tests/jobs/ft_collective_job.py``): a rank
SIGKILLed, every algorithm and the torch backend raise ProcessFailed on every
survivor, the survivors shrink and match NumPy, the watchdog does not abort them;
a ProcessFailed left uncaught ends the job naming the rank.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hpcdl.elastic import ElasticSampler, State
from hpcdl.launch import build_command
from helpers.ft_launch import launch_ft

JOB = Path(__file__).parent / "jobs" / "ft_collective_job.py"


@pytest.mark.fake_ranks
def test_launch_ft_flags() -> None:
    args, _, _ = build_command(["-n", "3", "--ft", "--", "python", "x.py"])
    assert args[:6] == ["-n", "3", "--with-ft", "ulfm", "-x", "HPCDL_FT=1"]
    plain, _, _ = build_command(["-n", "3", "--", "python", "x.py"])
    assert "--with-ft" not in plain


@pytest.mark.fake_ranks
@pytest.mark.parametrize("sizes", [(4, 3, 2), (3, 2), (4, 1), (2, 2)])
def test_sampler_reshards_without_repeats(sizes: tuple[int, ...]) -> None:
    """Ranks of a shrinking job each take their piece; every sample once per epoch."""
    n, batch = 1000 + random.Random(sum(sizes)).randrange(50), 7
    used: Counter = Counter()
    position, epoch = 0, 3
    for stage, size in enumerate(sizes):
        samplers = [ElasticSampler(n, batch, SimpleNamespace(rank=r, size=size), seed=5)
                    for r in range(size)]
        for s in samplers:
            s.set_epoch(epoch)
            s.position = position
        iters = [iter(s) for s in samplers]
        steps = 5 if stage < len(sizes) - 1 else 10 ** 6   # shrink after 5 steps
        for _ in range(steps):
            pieces = [next(it, None) for it in iters]
            if pieces[0] is None:
                break
            for p in pieces:
                used.update(p)
            assert sum(map(len, pieces)) == samplers[0].step_samples
        position = samplers[0].position
    assert sorted(used) == list(range(n)) and set(used.values()) == {1}


@pytest.mark.fake_ranks
def test_state_commit_and_restore() -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    sampler = ElasticSampler(100, 4, SimpleNamespace(rank=0, size=1))
    state = State(model=model, optimizer=opt, sampler=sampler, step=0, epoch=1)
    model(torch.ones(3)).sum().backward()
    opt.step()
    next(iter(sampler))
    state.step = 1
    state.commit()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    draw = torch.rand(3)
    state.commit()   # RNG state too: the next draw repeats after a restore
    model(torch.ones(3)).sum().backward()
    opt.step()
    state.step, state.epoch = 2, 2
    next(iter(sampler))
    again = torch.rand(3)
    state.restore()
    assert state.step == 1 and state.epoch == 1 and sampler.position == 4
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.rand(3), again) and not torch.equal(draw, again)
    assert opt.state_dict()["state"][0]["step"] == 1


@pytest.mark.spawns
def test_every_algorithm_raises_process_failed() -> None:
    # 4 ranks on 2 emulated nodes: hierarchical has both levels. A 2 s watchdog and 5 s
    # of sleep after the recovery: the watchdog must not take the death for a stall.
    res, took = launch_ft(4, ["python", str(JOB), "handled", "5"],
                          {"HPCDL_TIMEOUT": "2", "HPCDL_RANKS_PER_NODE": "2"})
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(("OK", "BAD"))]
    assert len(lines) == 3 and all(ln.startswith("OK") for ln in lines), out
    for name in ("native", "chunked", "ring", "tree", "hierarchical", "auto", "torch"):
        assert all(f"{name}=ProcessFailed" in ln for ln in lines), out
    assert "watchdog" not in out, out


@pytest.mark.spawns
def test_unhandled_process_failed_ends_the_job() -> None:
    res, took = launch_ft(3, ["python", str(JOB), "unhandled"])
    assert res.returncode != 0, res.stdout + res.stderr
    assert re.search(r"\[hpcdl rank [01]/3\] uncaught exception", res.stderr), res.stderr
    assert "ProcessFailed" in res.stderr and "aborting the whole job" in res.stderr
    assert took < 120
