"""``hpcdl.init()``: ranks, node layout, emulated nodes, the CUDA-aware probe."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

import hpcdl
from hpcdl import runtime
from hpcdl.comm.nodes import job_layout
from hpcdl.runtime import launched_rank, launcher_env, probe_cuda_aware, under_launcher

HPCDL = str(Path(sys.executable).parent / "hpcdl")


def test_init_is_idempotent_and_consistent(ctx):
    assert hpcdl.init() is ctx and hpcdl.get_context() is ctx and hpcdl.is_initialized()
    assert (ctx.rank, ctx.size) == (MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size())
    # hpcdl talks on its own Dup of COMM_WORLD, never on COMM_WORLD itself
    assert MPI.Comm.Compare(ctx.comm.mpi, MPI.COMM_WORLD) == MPI.CONGRUENT
    assert 0 <= ctx.local_rank < ctx.local_size <= ctx.size
    assert 0 <= ctx.node < ctx.num_nodes <= ctx.size
    assert (ctx.local_comm.rank, ctx.local_comm.size) == (ctx.local_rank, ctx.local_size)
    assert ctx.cross_comm.rank == ctx.node
    assert ctx.gpu is None and ctx.gpu_count == 0  # no GPU on this machine
    assert "Open MPI" in ctx.mpi_library and not ctx.cuda_aware
    assert ctx.thread_level in ("single", "funneled", "serialized", "multiple")
    assert f"rank={ctx.rank}" in repr(ctx)


def test_layout_agrees_across_ranks(ctx):
    rows = ctx.comm.allgather_object((ctx.node, ctx.local_rank, ctx.local_size, ctx.num_nodes))
    nodes = sorted({r[0] for r in rows})
    assert nodes == list(range(ctx.num_nodes))  # contiguous node indices
    assert len({(r[0], r[1]) for r in rows}) == ctx.size  # (node, local_rank) unique
    sizes = {n: {r[2] for r in rows if r[0] == n} for n in nodes}
    assert all(len(s) == 1 for s in sizes.values())  # one local_size per node
    assert sum(s.pop() for s in sizes.values()) == ctx.size
    assert {r[3] for r in rows} == {ctx.num_nodes}
    for n in nodes:  # local ranks on a node are 0..local_size-1
        assert sorted(r[1] for r in rows if r[0] == n) == list(range(sum(r[0] == n for r in rows)))
    # every rank on this machine shares memory: one node, unless emulated
    if "HPCDL_RANKS_PER_NODE" not in os.environ:
        assert ctx.num_nodes == 1 and ctx.local_size == ctx.size


def test_layout_follows_the_launcher_local_rank(ctx):
    """Under mpiexec the local rank agrees with OMPI_COMM_WORLD_LOCAL_RANK."""
    env = launcher_env()
    if "OMPI_COMM_WORLD_LOCAL_RANK" in env:
        assert ctx.local_rank == int(env["OMPI_COMM_WORLD_LOCAL_RANK"])
        assert "agrees with the launcher" in ctx.layout_source
    else:
        assert ctx.local_rank == ctx.rank
    assert launcher_env({"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "HOME": "/x"}) == \
        {"SLURM_PROCID": "3", "SLURM_LOCALID": "1"}


def test_under_launcher_and_launched_rank(ctx):
    """One answer to "is this a rank of a launched job?" (hpcdl tune, the test suite)."""
    assert under_launcher({"PMIX_RANK": "2"}) and under_launcher({"SLURM_STEP_ID": "0"})
    assert under_launcher({"OMPI_COMM_WORLD_SIZE": "4"}) and under_launcher({"PMI_SIZE": "2"})
    # an salloc shell or a batch script has these, but is not a rank
    assert not under_launcher({"SLURM_NTASKS": "4", "SLURM_JOB_ID": "7", "HOME": "/x"})
    assert launched_rank({"OMPI_COMM_WORLD_RANK": "3"}) == 3
    assert launched_rank({"HOME": "/x"}) is None
    if ctx.size > 1:  # only a launcher starts a job of several ranks
        assert under_launcher() and launched_rank() == MPI.COMM_WORLD.Get_rank()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_emulated_nodes(ctx, k):
    """HPCDL_RANKS_PER_NODE=k: blocks of k consecutive ranks form a node."""
    local, node, num_nodes, source = job_layout(ctx.comm, {"HPCDL_RANKS_PER_NODE": str(k)}, None)
    x = np.array([ctx.rank], np.int64)
    g = np.empty(local.size, np.int64)
    local.allgather(x, g)
    assert node == ctx.rank // k and num_nodes == -(-ctx.size // k)
    assert local.rank == ctx.rank % k and local.size == min(k, ctx.size - node * k)
    assert g.tolist() == list(range(node * k, node * k + local.size))
    assert f"HPCDL_RANKS_PER_NODE={k}" in source


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_emulated_nodes_bad_value(ctx, value):
    with pytest.raises(hpcdl.InvalidArgumentError, match=f"rank {ctx.rank}.*HPCDL_RANKS_PER_NODE"):
        job_layout(ctx.comm, {"HPCDL_RANKS_PER_NODE": value}, None)


@pytest.mark.spawns
def test_emulated_nodes_in_a_fresh_job(tmp_path):
    """HPCDL_RANKS_PER_NODE=2 at 4 ranks: 2 nodes of 2, as init() itself sees it."""
    env = dict(os.environ, HPCDL_RANKS_PER_NODE="2")
    proc = subprocess.run([HPCDL, "launch", "-n", "4", "--", "hpcdl", "info"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "nodes            2 (HPCDL_RANKS_PER_NODE=2 (emulated nodes))" in out, out
    assert "ranks per node   2" in out, out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [(int(r[0]), int(r[1]), int(r[2])) for r in rows] == \
        [(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)], out


# --- the CUDA-aware probe -----------------------------------------------------------

def test_probe_override():
    assert probe_cuda_aware("Open MPI v5.0.11", {"HPCDL_CUDA_AWARE": "1"}) == \
        (True, "HPCDL_CUDA_AWARE=1")
    assert probe_cuda_aware("CRAY MPICH", {"HPCDL_CUDA_AWARE": "0",
                                            "MPICH_GPU_SUPPORT_ENABLED": "1"})[0] is False
    for bad in ("yes", "true", "", "2"):
        with pytest.raises(hpcdl.InvalidArgumentError, match="HPCDL_CUDA_AWARE"):
            probe_cuda_aware("Open MPI v5.0.11", {"HPCDL_CUDA_AWARE": bad})


@pytest.mark.parametrize("library, env, expect", [
    ("MPI VERSION    : CRAY MPICH version 8.1.28.2 (ANL base 3.4a2)",
     {"MPICH_GPU_SUPPORT_ENABLED": "1"}, True),
    ("MPI VERSION    : CRAY MPICH version 8.1.28.2 (ANL base 3.4a2)", {}, False),
    ("MVAPICH2 Version      :\t2.3.7\nMVAPICH2 Release date :\tWed March 02 22:00:00 EST 2022",
     {"MV2_USE_CUDA": "1"}, True),
    ("MVAPICH2 Version      :\t2.3.7", {}, False),
    ("MPICH Version:      4.1.2\nMPICH Configure:    --prefix=/opt --with-cuda=/usr/local/cuda", {}, True),
    ("MPICH Version:      4.1.2\nMPICH Configure:    --prefix=/opt --with-cuda=/usr/local/cuda",
     {"MPIR_CVAR_ENABLE_GPU": "0"}, False),
    ("MPICH Version:      4.1.2\nMPICH Configure:    --prefix=/opt", {}, False),
    ("Intel(R) MPI Library 2021.10 for Linux* OS", {}, False),
], ids=["cray-on", "cray-off", "mvapich-on", "mvapich-off", "mpich-cuda", "mpich-cuda-disabled",
        "mpich-plain", "unknown"])
def test_probe_library_strings(library, env, expect):
    answer, reason = probe_cuda_aware(library, env)
    assert answer is expect and reason


def test_probe_agrees_with_this_mpi_library(ctx):
    """The probe reports what the library itself says, CUDA-aware or not (gpu.md's
    recommended setup is a CUDA-aware Open MPI: the answer must not be assumed)."""
    import ctypes

    library = MPI.Get_library_version()
    answer, reason = probe_cuda_aware(library, {})
    assert isinstance(answer, bool) and reason
    lib = runtime._loaded_libmpi() if "Open MPI" in library else None
    query = getattr(ctypes.CDLL(lib), "MPIX_Query_cuda_support", None) if lib else None
    if query is not None:
        query.restype = ctypes.c_int
        assert answer is bool(query()), reason
        assert "MPIX_Query_cuda_support" in reason
    if os.environ.get("HPCDL_CUDA_AWARE") is None:
        assert ctx.cuda_aware is answer and ctx.cuda_aware_reason == reason


def test_init_on_a_given_communicator(ctx):
    """init(comm) builds a separate context on a Dup of that communicator."""
    other = runtime.init(MPI.COMM_WORLD)
    assert other is not ctx and other.size == ctx.size and other.rank == ctx.rank
    x = np.ones(3)
    hpcdl.allreduce(x, comm=other.comm)
    assert hpcdl.get_context() is ctx
    np.testing.assert_array_equal(x, np.full(3, ctx.size))


@pytest.mark.spawns
def test_a_python_script_under_the_launcher(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        "import numpy as np, hpcdl\n"
        "ctx = hpcdl.init()\n"
        "x = np.full(4, float(ctx.rank))\n"
        "hpcdl.allreduce(x)\n"
        "print(f'rank {ctx.rank} of {ctx.size} sum {x[0]:.0f}', flush=True)\n")
    start = time.monotonic()
    proc = subprocess.run([HPCDL, "launch", "-n", "3", "--", "python", str(script)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split("\n"))[-3:] == [f"rank {r} of 3 sum 3" for r in range(3)]
    assert time.monotonic() - start < 60
