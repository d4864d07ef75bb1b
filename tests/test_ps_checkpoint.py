"""Parameter-server checkpoints (hpcdl/ps/checkpoint.py, quiesce.py), 2-4 ranks here;
the main job killed and resumed in test_ps_checkpoint_jobs.py.

* a shard re-split to another server count and chunking equals the new plan's
  shard of the whole model (serial, any layout);
* save at clock 3, resume in a second job: the servers answer exactly the saved
  parameters, the clocks and the optimizer's step count continue, and sync/ssp go on
  to the same final parameters as the uninterrupted job;
* resumed with another number of servers: the same parameters, re-split;
* a server that cannot take part ends the job on every rank, naming it.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import hpcdl
import hpcdl.ps as ps
from hpcdl.errors import InvalidArgumentError
from hpcdl.ps.checkpoint import PSCheckpoint, rebuild_shard

W0 = {"w": np.linspace(-1, 1, 40, dtype=np.float32).reshape(8, 5),
      "b": np.linspace(0, 1, 3, dtype=np.float32), "v": np.ones(11, np.float32)}
SAVE_AT, STEPS = 3, 5


def _need(ctx, servers: int, workers: int = 1) -> None:
    if ctx.size < servers + workers:
        pytest.skip(f"needs {servers} server(s) and {workers} worker(s)")


def _grads(step: int) -> dict[str, np.ndarray]:
    """The same gradient on every worker: the mean does not depend on the worker count."""
    rng = np.random.default_rng(100 + step)
    return {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in W0.items()}


def _job(ctx, path: str, *, servers: int, mode: str, resume: bool, chunk: int = 7):
    """Push STEPS clocks, checkpointing after SAVE_AT; a resumed job starts at the saved
    clock. Workers return (parameters after setup, at the save, at the end, clock, step
    count of the optimizer); servers return their stats."""
    ck = PSCheckpoint(path, 0, resume=resume, comm=ctx.comm, signals=())
    p = ps.setup(W0, optimizer=ps.Adam(lr=0.05), mode=mode, staleness=1 if mode == "ssp" else 0,
                 num_servers=servers, chunk_elems=chunk, timeout=60)
    ck.attach(p)
    if ck.is_server:
        return ck.serve()
    copy = lambda: {k: v.copy() for k, v in p.params.items()}  # noqa: E731
    start, saved = copy(), None
    first = p.clock
    for k in range(ck.step, STEPS):
        p.push_pull(_grads(k))
        ck.step = k + 1
        if ck.step == SAVE_AT:
            ck.save()
            # ssp/async answered this push before the slower workers' pushes were in: read
            # what the servers saved, before anyone pushes again (a test-only barrier).
            hpcdl.allreduce(np.zeros(1), comm=p.roles.group)
            p.pull()
            saved = copy()
            hpcdl.allreduce(np.zeros(1), comm=p.roles.group)
    hpcdl.allreduce(np.zeros(1), comm=p.roles.group)   # every push is in: ssp applied all
    p.pull()
    out = (start, saved, copy(), (first, p.clock))
    p.close()
    return out


def test_rebuild_shard_resplits_any_layout():
    names, shapes = list(W0), [v.shape for v in W0.values()]
    whole = {k: v.ravel() for k, v in W0.items()}
    moments = {k: 2 * v.ravel() + 1 for k, v in W0.items()}
    old = ps.plan_shards(names, shapes, np.float32, 3, chunk_elems=5)
    import torch

    saved = []
    for i in range(old.num_servers):
        n = old.shard_size(i)
        saved.append({"pieces": [[p.name, p.start, p.stop, p.offset] for p in old.shards[i]],
                      "params": torch.from_numpy(old.pack(i, whole, np.empty(n, np.float32))),
                      "state": {"exp_avg": torch.from_numpy(
                          old.pack(i, moments, np.empty(n, np.float32)))}})
    new = ps.plan_shards(names, shapes, np.float32, 2, chunk_elems=9)

    def error(msg: str) -> Exception:
        return InvalidArgumentError(msg, op="test")

    for j in range(new.num_servers):
        params, state = rebuild_shard(new, j, saved, error)
        n = new.shard_size(j)
        np.testing.assert_array_equal(params, new.pack(j, whole, np.empty(n, np.float32)))
        np.testing.assert_array_equal(state["exp_avg"],
                                      new.pack(j, moments, np.empty(n, np.float32)))
    with pytest.raises(InvalidArgumentError, match="saved shards cover"):
        rebuild_shard(new, 0, saved[1:], error)      # a server's file missing: refused


def test_loaded_local_of_reads_any_saved_rank(tmp_path):
    """The hook an elastic resume uses to read the saved servers' files (one rank here)."""
    import torch
    from mpi4py import MPI

    from hpcdl.checkpoint import CheckpointManager
    from hpcdl.comm.mpi import MPICommunicator

    m = CheckpointManager(tmp_path, comm=MPICommunicator(MPI.COMM_SELF))
    m.save(7, {"s": 1}, {"shard": torch.arange(5.0)})
    loaded = m.load()
    assert torch.equal(loaded.local_of(0)["shard"], torch.arange(5.0))
    with pytest.raises(InvalidArgumentError, match="rank 1: this checkpoint was written by 1"):
        loaded.local_of(1)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("mode", ["sync", "ssp", "async"])
def test_resume_restores_the_saved_state_and_continues(ctx, mode, tmp_path):
    _need(ctx, 1)
    straight = ctx.comm.bcast_object(str(tmp_path / "a"), root=0)
    first = _job(ctx, straight, servers=1, mode=mode, resume=False)
    second = _job(ctx, straight, servers=1, mode=mode, resume=True)
    if isinstance(first, dict):            # a server: its counters went on from the save
        assert second["resumed_from_step"] == SAVE_AT and second["checkpoints"] == 0
        workers = ctx.size - 1
        assert second["pushes"] == first["pushes"] == STEPS * workers
        assert second["updates"] == first["updates"]
        return
    start, _, end, clocks = second
    assert clocks == (SAVE_AT, STEPS)                  # the worker's clock was restored
    for k in W0:                                       # bit for bit what was saved
        np.testing.assert_array_equal(start[k], first[1][k])
    if mode != "async":
        # the servers sum each clock's pushes in worker order: bit for bit
        for k in W0:
            np.testing.assert_array_equal(end[k], first[2][k])
    # async: the order in which a server applies the pushes after the save is timing's
    # (Adam steps on g3, g3, g4, g4 or g3, g4, g3, g4 end ~1% apart), in an uninterrupted
    # run too; what a resume guarantees is the restored state (above) and the counters.


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("before,after", [(1, 2), (2, 1)])
def test_resume_with_another_server_count(ctx, before, after, tmp_path):
    path = ctx.comm.bcast_object(str(tmp_path / "b"), root=0)
    first = _job(ctx, path, servers=before, mode="sync", resume=False, chunk=7)
    second = _job(ctx, path, servers=after, mode="sync", resume=True, chunk=4)
    if isinstance(second, dict):
        assert second["resumed_from_step"] == SAVE_AT
        return
    if not isinstance(first, dict):     # a worker in both jobs
        for k in W0:
            np.testing.assert_array_equal(second[0][k], first[1][k])
            # the Adam moments and step count went along: the same end (worker counts
            # differ, so the mean of equal gradients may round differently)
            np.testing.assert_allclose(second[2][k], first[2][k], rtol=1e-6, atol=1e-7)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("fault", ["no handler", "shard copy fails"])
def test_a_server_that_cannot_save_ends_the_job_naming_it(ctx, fault, tmp_path, monkeypatch):
    path = ctx.comm.bcast_object(str(tmp_path / "c"), root=0)
    server = ctx.size - 1
    p = ps.setup(W0, optimizer=ps.SGD(lr=0.1), num_servers=1, timeout=60)
    if fault == "no handler":
        if p.is_server:
            with pytest.raises(ps.PSError, match=r"asked for checkpoint 1, but server 0 "
                                                 rf"\(rank {server}\) serves without"):
                p.serve()
        else:
            p.push_pull(_grads(0))
            with pytest.raises(ps.PSError, match=rf"server rank {server} ended the job"):
                p.request_checkpoint(1)
        return
    ck = PSCheckpoint(path, 0, comm=ctx.comm, signals=())
    ck.attach(p)
    if p.is_server:
        def broken(clock: int) -> dict:
            raise OSError("no space left on device")

        monkeypatch.setattr(p, "shard_state", broken)
        with pytest.raises(ps.PSError, match="could not copy its shard for checkpoint 1"):
            ck.serve()
    else:
        p.push_pull(_grads(0))
        ck.step = 1
        with pytest.raises(ps.PSError, match=rf"server rank {server} ended the job: server 0 "
                           rf"\(rank {server}\) could not copy its shard for checkpoint 1: "
                           "OSError: no space left on device"):
            ck.save()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("written", ["by another mode", "for another model"])
def test_resume_refuses_a_checkpoint_of_another_job(ctx, written, tmp_path):
    """A server restores its shard before it serves, so it is the one to refuse: it names
    itself and the cause; the workers, waiting for its first answer, time out."""
    from hpcdl.checkpoint import CheckpointManager
    from hpcdl.errors import MismatchError

    path = ctx.comm.bcast_object(str(tmp_path / "d"), root=0)
    if written == "by another mode":   # a data-parallel checkpoint's layout
        CheckpointManager(path, comm=ctx.comm).save(
            1, {"counters": {"step": 1, "epoch": 1, "position": 0}} if ctx.rank == 0 else None,
            {"rng": None})
        cls, want = InvalidArgumentError, "is not a parameter-server checkpoint"
    else:
        _job(ctx, path, servers=1, mode="sync", resume=False)
        cls, want = MismatchError, "holds another model"
    ck = PSCheckpoint(path, 0, resume=True, comm=ctx.comm, signals=())
    other = {**W0, "b": np.zeros(4, np.float32)} if written == "for another model" else W0
    server = ctx.size - 1                  # the last rank serves
    if ctx.rank == server:
        p = ps.setup(other, optimizer=ps.Adam(lr=0.05), num_servers=1, timeout=3)
        with pytest.raises(cls, match=rf"rank {ctx.rank}/{ctx.size}\] ps.checkpoint: .*{want}"):
            ck.attach(p)
    else:
        with pytest.raises(ps.PSTimeoutError, match=rf"no answer from server ranks \[{server}\]"):
            ps.setup(other, optimizer=ps.Adam(lr=0.05), num_servers=1, timeout=3)


@pytest.mark.mpi(min_size=4)
def test_sync_sums_each_clock_in_worker_order_whatever_arrives_first(ctx):
    """What makes an exact resume possible with 3+ workers: float sums depend on their
    order, so the server adds a clock's pushes in worker order, not arrival order."""
    ends = []
    for late in (0, 2):                    # the worker whose pushes arrive last
        p = ps.setup(W0, optimizer=ps.SGD(lr=0.1), num_servers=1, timeout=60)
        if p.is_server:
            p.serve()
            continue
        i = p.roles.index
        for k in range(3):
            rng = np.random.default_rng(10 * k + i)
            g = {n: (rng.standard_normal(v.shape) * 10.0 ** rng.integers(-3, 3, v.shape))
                 .astype(np.float32) for n, v in W0.items()}
            if i == late:
                time.sleep(0.2)
            p.push_pull(g)
        ends.append({k: v.copy() for k, v in p.params.items()})
        p.close()
    if ends:
        for k in W0:
            np.testing.assert_array_equal(ends[0][k], ends[1][k])
