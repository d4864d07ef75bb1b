"""Which checkpoints a folder keeps, and what a new run does with an earlier run's folder:
``keep`` counts the newest saves (never the one just written), a run that does not resume
refuses a folder that holds checkpoints (in process, and the main job), and a signal at a
periodic save's step saves once."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from helpers.train_jobs import clean_env, train_cmd

import hpcdl
import hpcdl.torch as hdt
from hpcdl.checkpoint import CheckpointError, CheckpointManager, TrainingCheckpoint


@pytest.fixture
def shared_dir(ctx, tmp_path):
    """One folder for every rank (rank 0's tmp_path; all ranks run on this machine)."""
    return Path(ctx.comm.bcast_object(str(tmp_path), root=0)) / "ck"


def _save(m: CheckpointManager, ctx, step: int) -> None:
    m.save(step, {"step": step} if ctx.rank == 0 else None, {"rank": ctx.rank})


def _steps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("step-*"))


def test_keep_counts_the_newest_saves_not_the_highest_steps(ctx, shared_dir):
    # An earlier series left steps 900 and 1000; this one saves 50 and 100 (keep 2).
    _save(CheckpointManager(shared_dir, keep=2), ctx, 900)
    _save(CheckpointManager(shared_dir, keep=2), ctx, 1000)
    m = CheckpointManager(shared_dir, keep=2)
    _save(m, ctx, 50)
    ctx.comm.barrier()
    assert (shared_dir / "step-00000050").is_dir(), "the save just written was pruned"
    assert _steps(shared_dir) == ["step-00000050", "step-00001000"]
    assert m.load().step == 50
    _save(m, ctx, 100)
    ctx.comm.barrier()
    assert _steps(shared_dir) == ["step-00000050", "step-00000100"]
    # with latest gone, a resume still takes the newest save, not the highest step
    ctx.comm.barrier()
    if ctx.rank == 0:
        (shared_dir / "latest").unlink()
    ctx.comm.barrier()
    assert m.load().step == 100


def test_keep_1_never_deletes_the_save_just_written(ctx, shared_dir):
    _save(CheckpointManager(shared_dir, keep=1), ctx, 7)
    m = CheckpointManager(shared_dir, keep=1)
    _save(m, ctx, 3)   # e.g. a resume from an older checkpoint, saving lower steps
    ctx.comm.barrier()
    assert _steps(shared_dir) == ["step-00000003"]
    assert m.load().step == 3


def _training(directory, resume: bool, comm) -> TrainingCheckpoint:
    model = torch.nn.Linear(3, 2)
    return TrainingCheckpoint(directory, 0, model=model,
                              optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                              resume=resume, signals=(), comm=comm)


def _driver(kind: str, directory: Path, ctx) -> object:
    from hpcdl.pipeline import Grid, PipelineCheckpoint
    from hpcdl.preduce.checkpoint import PReduceCheckpoint
    from hpcdl.ps.checkpoint import PSCheckpoint

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    if kind == "training":
        return _training(directory, False, ctx.comm)
    if kind == "pipeline":
        return PipelineCheckpoint(directory, 0, grid=Grid(stages=1), model=model,
                                  optimizer=opt, signals=())
    if kind == "preduce":
        return PReduceCheckpoint(directory, 0, model=model, optimizer=opt, comm=ctx.comm,
                                 signals=())
    return PSCheckpoint(directory, 0, comm=ctx.comm, signals=())


@pytest.mark.parametrize("kind", ["training", "pipeline", "preduce", "ps"])
def test_a_new_run_refuses_an_earlier_runs_folder(ctx, shared_dir, kind):
    old = _training(shared_dir, False, ctx.comm)
    for step in (900, 1000):
        old.step = step
        old.save()
    with pytest.raises(CheckpointError, match=rf"rank {ctx.rank}\b.*checkpoint start: "
                       rf"{shared_dir} already holds 2 checkpoint\(s\) of an earlier run, the "
                       r"newest step-00001000: to continue that run, pass resume=True"):
        _driver(kind, shared_dir, ctx)
    ctx.comm.barrier()
    assert _steps(shared_dir) == ["step-00000900", "step-00001000"]   # nothing touched
    assert _training(shared_dir, True, ctx.comm).resumed_from == 1000
    # an empty folder, or one that does not exist yet, is a new run's
    assert _driver(kind, shared_dir / "fresh", ctx).manager is not None


@pytest.mark.spawns
def test_main_job_refuses_an_earlier_runs_folder_without_resume(ctx, tmp_path):
    ckdir = tmp_path / "ck"
    m = CheckpointManager(ckdir, keep=2, comm=hpcdl.init().comm)
    for step in (900, 1000):
        m.save(step, {"step": step}, {"rank": 0})
    done = subprocess.run(train_cmd(2, tmp_path / "out", "--epochs", "1", "--checkpoint-dir",
                                    str(ckdir), "--checkpoint-every", "4"),
                          capture_output=True, text=True, timeout=600, env=clean_env())
    assert done.returncode != 0, "the job ran in another run's checkpoint folder"
    assert (f"{ckdir} already holds 2 checkpoint(s) of an earlier run, the newest "
            "step-00001000: to continue that run, pass resume=True (--resume in the main "
            "job)") in done.stderr, done.stderr[-3000:]
    assert _steps(ckdir) == ["step-00000900", "step-00001000"]
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_signal_at_a_periodic_save_saves_once(ctx, shared_dir):
    """SIGUSR1 (to rank 0 only) arriving in the step that also ends a period: one save, then
    exit 0; the checkpoint on disk is that save's."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    sampler = hdt.DistributedSampler(data, shuffle=True, seed=1)
    loader = torch.utils.data.DataLoader(data, batch_size=2, sampler=sampler)
    ck = TrainingCheckpoint(shared_dir, 3, model=model, optimizer=opt, sampler=sampler,
                            signals=("USR1",))
    try:
        with pytest.raises(SystemExit) as stop:
            for x, y in ck.batches(loader):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                if ck.step + 1 == 6 and ctx.rank == 0:   # this step ends the 2nd period
                    os.kill(os.getpid(), signal.SIGUSR1)
    finally:
        ck.signal.restore()
    assert stop.value.code == 0 and ck.step == 6
    assert ck.manager.saves == 2, f"{ck.manager.saves} saves for steps 3 and 6"
    ctx.comm.barrier()
    assert _steps(shared_dir) == ["step-00000003", "step-00000006"]
    assert ck.manager.load().step == 6
