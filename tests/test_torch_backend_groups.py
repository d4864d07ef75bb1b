"""Groups over the same ranks but made separately stay apart, as gloo keeps them.

The default group, ``new_group(range(size))`` (twice) and hpcdl's own world
communicator all span every rank. Ranks issue one async allreduce on each of
them in a different order (rank r uses the r-th permutation); each group must
still reduce its own tensors. Were two of them one FIFO queue or one MPI
communicator, rank 0's first operation would meet rank 1's first, which
belongs to another group: a crosswise sum (or a wait that times out, since
every wait here has a deadline, so the test cannot hang).

Destroying a group frees the MPI communicators the backend made for it (its
collective one and its point-to-point one) and stops its progress thread.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from mpi4py import MPI

import hpcdl
from helpers.torch_backend_util import rank_data, world

WAIT = timedelta(seconds=120)
CYCLES = 200
HPCDL = str(Path(sys.executable).parent / "hpcdl")


def test_groups_spanning_every_rank_do_not_mix_their_operations():
    rank, size = world()
    everyone = list(range(size))
    groups = {"default": None, "new_group A": dist.new_group(everyone),
              "new_group B": dist.new_group(everyone), "hpcdl world": "hpcdl"}
    names = list(groups)
    inputs = {name: [rank_data(50 + k, r, (257,), torch.float64) * (10 ** k) for r in everyone]
              for k, name in enumerate(names)}
    # even ranks in one order, odd ranks in the reverse, rank 2 and 3 rotated too
    order = names[rank // 2 % len(names):] + names[:rank // 2 % len(names)]
    order = order if rank % 2 == 0 else order[::-1]
    results, waits = {}, []
    for name in order:
        t = inputs[name][rank].clone()
        results[name] = t
        if groups[name] == "hpcdl":
            h = hpcdl.allreduce(t.numpy(), async_op=True)
            waits.append(lambda h=h: h.wait(WAIT.total_seconds()))
        else:
            w = dist.all_reduce(t, group=groups[name], async_op=True)
            waits.append(lambda w=w: w.wait(WAIT))
    for wait in waits:
        wait()
    for name in names:
        want = np.sum([x.numpy() for x in inputs[name]], axis=0)
        np.testing.assert_allclose(results[name].numpy(), want, rtol=1e-12, atol=1e-9,
                                   err_msg=f"{name} on rank {rank} (order {order})")
    for g in (groups["new_group A"], groups["new_group B"]):
        dist.destroy_process_group(g)


def test_destroying_groups_frees_their_communicators_without_slowing_down():
    rank, size = world()
    everyone = list(range(size))
    threads = threading.active_count()
    freed, laps = 0, []
    for cycle in range(CYCLES):
        start = time.perf_counter()
        g = dist.new_group(everyone)
        t = torch.full((4,), float(rank + cycle))
        dist.all_reduce(t, group=g)  # starts the group's progress thread
        assert t[0].item() == sum(range(size)) + size * cycle, f"cycle {cycle}"
        comms = g.communicators
        dist.destroy_process_group(g)
        freed += sum(c.mpi == MPI.COMM_NULL for c in comms)
        laps.append(time.perf_counter() - start)
    assert freed == 2 * CYCLES, f"rank {rank}: {freed} of {2 * CYCLES} communicators freed"
    assert threading.active_count() <= threads, "a destroyed group left its thread running"
    first, last = sum(laps[:50]), sum(laps[-50:])
    # generous: other jobs share this machine's cores; a leak grows without bound
    assert last < 3 * first + 2.0, f"rank {rank}: last 50 cycles {last:.2f} s, first {first:.2f} s"


@pytest.mark.spawns
def test_destroying_the_default_group_frees_its_communicators(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        "import torch, torch.distributed as dist\n"
        "from mpi4py import MPI\n"
        "import hpcdl, hpcdl.torch\n"
        "for round in range(2):\n"
        "    dist.init_process_group('hpcdl')\n"
        "    t = torch.ones(3)\n"
        "    dist.all_reduce(t)\n"
        "    comms = dist.group.WORLD.communicators\n"
        "    dist.destroy_process_group()\n"
        "    assert all(c.mpi == MPI.COMM_NULL for c in comms), comms\n"
        "x = torch.ones(2)\n"
        "hpcdl.allreduce(x)  # hpcdl's own world communicator is not the group's: still open\n"
        "print(f'rank {dist.get_rank() if dist.is_initialized() else hpcdl.get_context().rank}'\n"
        "      f' freed sum {t[0].item():.0f} {x[0].item():.0f}', flush=True)\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMPI_", "PMIX_", "PRTE_", "MASTER_"))}
    proc = subprocess.run([HPCDL, "launch", "-n", "2", "--", "python", str(script)],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert sorted(proc.stdout.split("\n"))[-2:] == [f"rank {r} freed sum 2 2" for r in range(2)]
