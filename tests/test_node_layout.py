"""One rule decides which ranks share a node, for the default communicator and any other
(hpcdl/comm/nodes.py): every communicator's layout is the job's, restricted to its ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.node_layout import layout_errors

JOB = Path(__file__).parent / "jobs" / "node_layout_job.py"


@pytest.mark.mpi_pass
def test_every_communicator_gets_the_job_layout(ctx):
    every = ctx.comm.allgather_object(layout_errors(ctx))
    assert not any(every), every


@pytest.mark.spawns
@pytest.mark.parametrize("ranks", [3, 4])
def test_subgroups_keep_the_emulated_nodes_of_their_ranks(ranks):
    """HPCDL_RANKS_PER_NODE=2: nodes are blocks of world ranks on every communicator, so
    ranks 1..3 of a subgroup are on nodes {1}, {2, 3} (not blocks of subgroup ranks)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PRTE_"))}
    env["HPCDL_RANKS_PER_NODE"] = "2"
    exe = Path(sys.executable).with_name("hpcdl")
    done = subprocess.run([str(exe), "launch", "-n", str(ranks), "--", sys.executable,
                           str(JOB)], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("layout ok") == ranks, done.stdout
