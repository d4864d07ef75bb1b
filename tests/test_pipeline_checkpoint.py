"""Pipeline checkpoints (hpcdl/pipeline/checkpoint.py) through DCP, resharded by layout.

Library level, at every rank count: stages saved under the whole model's
parameter names load into any S x D layout (the model, and Adam's state through
torch's flattened optimizer state dict), checked against the unsplit model
trained the same way in this process. Serial pass only: the main job's
``--mode pipeline`` SIGKILLed after its first checkpoint and resumed, bit-identical
at the same layout (2 ranks S=2, 4 ranks S=2 x D=2), and at another layout.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from helpers.train_jobs import kill_after_first_checkpoint, run_job, train_cmd

import hpcdl.pipeline as hp
from hpcdl.checkpoint import params_sha256
from hpcdl.checkpoint.sharded import SafeReader
from hpcdl.errors import InvalidArgumentError

torch.set_num_threads(1)
SEED = 5
# 4 layers with parameters: every stage of up to 4 gets one.
BUILDERS = [lambda: nn.Linear(5, 8), lambda: nn.Tanh(), lambda: nn.Linear(8, 8), lambda: nn.Tanh(),
            lambda: nn.Linear(8, 6), lambda: nn.Linear(6, 3)]


@pytest.fixture
def shared_dir(ctx, tmp_path):
    """One folder for every rank (rank 0's tmp_path; all ranks run on this machine)."""
    return Path(ctx.comm.bcast_object(str(tmp_path), root=0)) / "ck"


def layouts(size: int) -> list[int]:
    """Stage counts to try at this rank count (S divides the ranks, at most 4 stages)."""
    return [s for s in (1, 2, 3, 4) if size % s == 0]


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 2) -> None:
    """Steps whose gradients depend only on each parameter's name and value, so a stage
    gets exactly what the unsplit model's same parameters get."""
    for _ in range(steps):
        for name, p in model.named_parameters():
            p.grad = torch.sin(3 * p.detach()) + 0.1 * len(name)
        opt.step()


def reference() -> tuple[nn.Module, torch.optim.Optimizer]:
    full = nn.Sequential(*hp.build_layers(BUILDERS, range(len(BUILDERS)), seed=SEED))
    opt = torch.optim.Adam(full.parameters(), lr=0.01)
    train(full, opt)
    return full, opt


def my_stage(stages: int, seed: int) -> tuple[hp.Grid, nn.Module, torch.optim.Optimizer]:
    grid = hp.Grid(stages=stages)
    stage = hp.build_stage(BUILDERS, stages, grid.stage, seed=seed)
    named = hp.whole_model_names(stage, hp.stage_bounds(BUILDERS, stages)[grid.stage])
    return grid, named, torch.optim.Adam(stage.parameters(), lr=0.01)


def test_whole_model_names_and_hash_match_the_unsplit_model(ctx):
    full, _ = reference()
    full_names = dict(full.named_parameters())
    for stages in layouts(ctx.size):
        grid, named, opt = my_stage(stages, SEED)
        train(named, opt)
        for name, p in named.named_parameters():
            assert torch.equal(p, full_names[name]), (stages, name)
        assert hp.pipeline_sha256(named, grid) == params_sha256(full)


def test_saved_at_one_layout_loads_at_every_layout(ctx, shared_dir):
    full, full_opt = reference()
    full_params = dict(full.named_parameters())
    full_state = {n: full_opt.state[p] for n, p in full.named_parameters()}
    saved_stages = 2 if ctx.size % 2 == 0 else ctx.size
    grid, named, opt = my_stage(saved_stages, SEED)
    train(named, opt)
    ck = hp.PipelineCheckpoint(shared_dir, 0, grid=grid, model=named, optimizer=opt,
                               extra={"history": [{"epoch": 1}]})
    ck.step, ck.epoch, ck.position = 7, 2, 96
    folder = ck.save()
    # DCP holds tensors only (it would unpickle anything else with a full unpickler)
    meta = SafeReader(str(folder / "sharded")).read_metadata()
    assert all(isinstance(m, TensorStorageMetadata) for m in meta.state_dict_metadata.values())
    assert {k for k in meta.state_dict_metadata if k.startswith("model.")} == \
        {f"model.{n}" for n in full_params}
    for stages in layouts(ctx.size):
        grid, named, opt = my_stage(stages, seed=99)   # other weights: all from the checkpoint
        history: list = []
        ck = hp.PipelineCheckpoint(shared_dir, 0, grid=grid, model=named, optimizer=opt,
                                   extra={"history": history}, resume=True)
        assert (ck.step, ck.epoch, ck.position, history) == (7, 2, 96, [{"epoch": 1}])
        for name, p in named.named_parameters():
            assert torch.equal(p, full_params[name]), (stages, name)
            mine, ref = opt.state[p], full_state[name]
            for key in ("step", "exp_avg", "exp_avg_sq"):
                assert torch.equal(mine[key], ref[key]), (stages, name, key)
        assert opt.param_groups[0]["lr"] == 0.01
        # and training goes on as the unsplit model's would
        train(named, opt, 1)
        again, again_opt = reference()
        train(again, again_opt, 1)
        ref_params = dict(again.named_parameters())
        assert all(torch.equal(p, ref_params[n]) for n, p in named.named_parameters())


def test_no_checkpoint_leaves_a_fresh_optimizer(ctx, shared_dir):
    grid, named, opt = my_stage(ctx.size, SEED)
    ck = hp.PipelineCheckpoint(shared_dir / "empty", 0, grid=grid, model=named, optimizer=opt,
                               resume=True)
    assert ck.resumed_from is None and len(opt.state) == 0


def test_a_wrapped_optimizer_is_refused(ctx, shared_dir):
    grid, named, opt = my_stage(ctx.size, SEED)
    with pytest.raises(InvalidArgumentError, match=f"rank {ctx.rank}.*torch optimizer itself"):
        hp.PipelineCheckpoint(shared_dir, 0, grid=grid, model=named, optimizer=object())


def test_non_tensor_values_in_dcp_are_not_unpickled(ctx, shared_dir):
    # Why PipelineCheckpoint keeps the optimizer's hyperparameters out of DCP: DCP would
    # read them back with torch.load(weights_only=False); hpcdl's reader refuses.
    from hpcdl.checkpoint import CheckpointManager

    hp.Grid(stages=1)   # the default process group DCP runs over
    m = CheckpointManager(shared_dir)
    m.save(1, {} if ctx.rank == 0 else None, None,
           sharded={"w": torch.ones(3), "betas": (0.9, 0.999)})
    state = {"w": torch.zeros(3), "betas": (0.0, 0.0)}
    # (DCP raises CheckpointException, a BaseException, carrying every rank's traceback)
    with pytest.raises(BaseException, match="betas.*full unpickler \\(refused\\)"):
        m.load(sharded=state)
    only_tensors = {"w": torch.zeros(3)}
    m.load(sharded=only_tensors)
    assert torch.equal(only_tensors["w"], torch.ones(3))


# -- the main job, killed and resumed (serial pass only) ----------------------------------
EPOCHS = 2
EVERY = 4   # optimizer steps between checkpoints (11-22 steps per epoch here)


def _cmd(n: int, stages: int, out: Path, *extra: str) -> list[str]:
    return train_cmd(n, out, "--mode", "pipeline", "--stages", str(stages),
                     "--epochs", str(EPOCHS), *extra)


def _run(n: int, stages: int, out: Path, *extra: str) -> dict:
    return run_job(_cmd(n, stages, out, *extra), out, timeout=600)


@pytest.fixture(scope="module", params=[2, 4])
def killed(request, tmp_path_factory):
    """(rank count, the uninterrupted run's metrics, its checkpoints, a copy) at S = 2."""
    n = request.param
    base = tmp_path_factory.mktemp(f"pipeline-resume{n}")
    reference_run = _run(n, 2, base / "reference")
    ckdir = base / "ck"
    kill_after_first_checkpoint(_cmd(n, 2, base / "killed", "--checkpoint-dir", str(ckdir),
                                     "--checkpoint-every", str(EVERY)), ckdir, base / "killed")
    spare = base / "ck-spare"
    shutil.copytree(ckdir, spare)
    return n, reference_run, ckdir, spare


@pytest.mark.spawns
def test_main_job_killed_and_resumed_is_bit_identical(killed, tmp_path):
    n, reference_run, ckdir, _ = killed
    resumed = _run(n, 2, tmp_path, "--checkpoint-dir", str(ckdir), "--checkpoint-every",
                   str(EVERY), "--resume")
    step = resumed["checkpoint"]["resumed_from_step"]
    print(f"{n} ranks (2 x {n // 2}): uninterrupted {reference_run['params_sha256']}\n"
          f"{n} ranks (2 x {n // 2}): resumed from step {step} {resumed['params_sha256']}")
    assert step is not None and step >= EVERY and "exact)" in resumed["stderr"]
    assert resumed["params_sha256"] == reference_run["params_sha256"]
    curve = lambda m: [(e["epoch"], e["loss"], e["accuracy"]) for e in m["epochs"]]  # noqa: E731
    assert curve(resumed) == curve(reference_run)   # the interrupted epoch's loss too


@pytest.mark.spawns
def test_main_job_resumed_at_another_layout(killed, tmp_path):
    # 4 ranks (2 stages x 2 replicas) -> 2 ranks (2 x 1): other replicas.
    # 2 ranks (2 stages) -> 3 ranks (3 stages): the layers split differently. A replica's
    # batch is --batch-size x stages, 96 samples instead of 64, so an epoch holds 2/3 of
    # the optimizer steps: the resumed run gets one epoch more to take as many steps as
    # the uninterrupted run took in 2 (at 2 epochs it ends near 78% against 85%).
    n, reference_run, _, spare = killed
    m, stages, epochs = {4: (2, 2, EPOCHS), 2: (3, 3, EPOCHS + 1)}[n]
    resumed = _run(m, stages, tmp_path, "--checkpoint-dir", str(spare), "--resume",
                   "--epochs", str(epochs))
    print(f"{n} ranks (2 x {n // 2}) -> {m} ranks ({stages} x {m // stages}): accuracy "
          f"{resumed['test_accuracy']:.4f} after {epochs} epochs, uninterrupted at {n}: "
          f"{reference_run['test_accuracy']:.4f} after {EPOCHS}")
    assert f"elastic: saved at {n} ranks (2 stages x {n // 2} replicas), now {m} " \
           f"({stages} x {m // stages})" in resumed["stderr"]
    assert resumed["ranks"] == m and len(resumed["epochs"]) == epochs
    assert resumed["test_accuracy"] >= reference_run["test_accuracy"] - 0.05
