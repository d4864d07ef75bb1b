"""Checkpoint/restart (hpcdl/checkpoint/): atomic saves, corrupt and truncated files
detected with a fallback to the previous good checkpoint, keep=K, no unpickling, and an
exact mid-epoch resume of a training loop at any rank count (in process)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import hpcdl
import hpcdl.torch as hdt
from hpcdl.checkpoint import (CheckpointError, CheckpointManager, TrainingCheckpoint,
                              params_sha256, rng_state, set_rng_state)
from hpcdl.checkpoint.files import sha256_file


@pytest.fixture
def shared_dir(ctx, tmp_path):
    """One folder for every rank (rank 0's tmp_path; all ranks run on this machine)."""
    return Path(ctx.comm.bcast_object(str(tmp_path), root=0)) / "ck"


def _save(m: CheckpointManager, ctx, step: int) -> None:
    shared = {"w": torch.full((5,), float(step)), "step": step} if ctx.rank == 0 else None
    m.save(step, shared, {"rank": ctx.rank, "x": torch.arange(3) * ctx.rank})


def test_save_load_keep_and_latest(ctx, shared_dir):
    m = CheckpointManager(shared_dir, keep=2)
    for step in (10, 20, 30):
        _save(m, ctx, step)
    ctx.comm.barrier()
    assert sorted(p.name for p in shared_dir.iterdir()) == ["latest", "step-00000020",
                                                            "step-00000030"]
    assert (shared_dir / "latest").read_text().strip() == "step-00000030"
    got = m.load()
    assert got.step == 30 and got.saved_size == ctx.size
    assert torch.equal(got["shared"]["w"], torch.full((5,), 30.0))
    assert got["local"]["rank"] == ctx.rank
    assert torch.equal(got["local"]["x"], torch.arange(3) * ctx.rank)
    manifest = json.loads((shared_dir / "step-00000030" / "manifest.json").read_text())
    assert len(manifest["files"]) == ctx.size + 1
    for name, meta in manifest["files"].items():
        assert sha256_file(shared_dir / "step-00000030" / name) == meta["sha256"]


def test_empty_directory_loads_nothing(ctx, shared_dir):
    assert CheckpointManager(shared_dir).load() is None


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "no-manifest"])
def test_damaged_latest_falls_back_to_previous(ctx, shared_dir, capsys, damage):
    m = CheckpointManager(shared_dir, keep=3)
    _save(m, ctx, 1)
    _save(m, ctx, 2)
    newest = shared_dir / "step-00000002"
    if ctx.rank == 0:
        victim = newest / ("rank-00000.pt" if damage == "truncate" else "shared.pt")
        data = victim.read_bytes()
        if damage == "flip":
            victim.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
        elif damage == "truncate":
            victim.write_bytes(data[: len(data) // 2])
        elif damage == "delete":
            victim.unlink()
        else:
            (newest / "manifest.json").unlink()
        with pytest.raises(CheckpointError) as err:
            m.verify(newest)
        why = {"flip": "sha256 does not match", "truncate": "truncated",
               "delete": "shared.pt is missing", "no-manifest": "no manifest.json"}[damage]
        assert why in str(err.value) and str(newest) in str(err.value)
    ctx.comm.barrier()
    got = m.load()
    assert got.step == 1 and torch.equal(got["shared"]["w"], torch.full((5,), 1.0))
    if ctx.rank == 0:
        assert "trying the previous checkpoint" in capsys.readouterr().err


def test_interrupted_save_leaves_previous_intact(ctx, shared_dir):
    m = CheckpointManager(shared_dir, keep=2)
    _save(m, ctx, 4)
    if ctx.rank == 0:
        # What a kill during a save leaves behind: a .tmp folder, no pointer change.
        (shared_dir / "step-00000008.tmp").mkdir()
        (shared_dir / "step-00000008.tmp" / "shared.pt").write_bytes(b"partial")
    ctx.comm.barrier()
    assert m.load().step == 4
    _save(m, ctx, 8)   # the next save replaces the leftover
    assert m.load().step == 8


def test_nothing_is_unpickled(ctx, shared_dir):
    Path(_PWNED).unlink(missing_ok=True)
    m = CheckpointManager(shared_dir)
    _save(m, ctx, 1)
    folder = shared_dir / "step-00000001"
    if ctx.rank == 0:
        # A file with a pickled object whose unpickling would run code, and a manifest
        # that vouches for it: weights_only loading must refuse it.
        torch.save({"evil": _Evil()}, folder / "shared.pt")
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["files"]["shared.pt"] = {"sha256": sha256_file(folder / "shared.pt"),
                                          "bytes": (folder / "shared.pt").stat().st_size}
        (folder / "manifest.json").write_text(json.dumps(manifest))
    ctx.comm.barrier()
    with pytest.raises(CheckpointError, match="could not read"):
        m.load()
    assert not Path(_PWNED).exists()


_PWNED = "/tmp/hpcdl-test-checkpoint-pwned"


class _Evil:
    def __reduce__(self):  # unpickling this would create _PWNED
        return (open, (_PWNED, "w"))


def test_keep_must_be_positive(ctx, shared_dir):
    with pytest.raises(hpcdl.InvalidArgumentError, match="keep=0"):
        CheckpointManager(shared_dir, keep=0)


def test_rng_state_round_trip():
    state = rng_state()
    a = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    set_rng_state(state)
    b = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    assert a == b


def test_params_sha256_sees_one_bit():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    h = params_sha256(model)
    assert h == params_sha256(model)
    with torch.no_grad():
        w = model[0].weight.view(-1)
        w[0] = torch.nextafter(w[0], torch.tensor(1.0))
    assert params_sha256(model) != h


@pytest.mark.parametrize("size,start", [(1, 0), (2, 64), (3, 96), (4, 1000), (3, 1437)])
def test_sampler_start_reshards_the_rest(size, start):
    n = 1437
    full = hdt.DistributedSampler(n, num_replicas=size, rank=0, seed=3)
    order = full.global_order()
    parts = []
    for r in range(size):
        s = hdt.DistributedSampler(n, num_replicas=size, rank=r, seed=3)
        s.set_start(start)
        parts.append(list(s))
        assert len(s) == len(parts[-1])
    assert len({len(p) for p in parts}) == 1          # every rank the same step count
    assert set(sum(parts, [])) == set(order[start:])  # the rest of the epoch, all of it
    if start % size == 0 and start:
        # At the rank count that consumed `start`, each rank continues its own shard.
        for r in range(size):
            s = hdt.DistributedSampler(n, num_replicas=size, rank=r, seed=3)
            assert parts[r] == list(s)[start // size:]


def _train(ctx, directory, *, stop_after: int | None = None, resume: bool = False,
           epochs: int = 2, every: int = 3) -> str:
    """A small data-parallel loop with dropout (uses the RNG) through TrainingCheckpoint.
    ``stop_after`` abandons the run after that many steps (a crash, minus the kill)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                torch.nn.Linear(16, 2))
    hdt.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = hdt.DistributedOptimizer(torch.optim.Adam(model.parameters(), lr=0.01),
                                   named_parameters=model.named_parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt.optimizer, step_size=4, gamma=0.5)
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(101, 6, generator=g),
                                          torch.randint(0, 2, (101,), generator=g))
    sampler = hdt.DistributedSampler(data, shuffle=True, seed=5)
    loader = torch.utils.data.DataLoader(data, batch_size=4, sampler=sampler)
    history: list = []
    ck = TrainingCheckpoint(directory, every, model=model, optimizer=opt, sampler=sampler,
                            scheduler=sched, extra={"history": history}, resume=resume,
                            signals=())
    steps = 0
    for epoch in ck.epochs(1, epochs + 1):
        sampler.set_epoch(epoch)
        running = torch.zeros(2, dtype=torch.float64)
        for x, y in ck.batches(loader, carry={"running": running}):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
            running += torch.tensor([loss.item() * len(y), len(y)], dtype=torch.float64)
            steps += 1
            if stop_after is not None and steps == stop_after:
                return ""
        hpcdl.allreduce(running, op="sum")
        history.append(float(running[0] / running[1]))
    return params_sha256(model) + f" {history}"


@pytest.mark.parametrize("stop_after", [4, 7])
def test_training_resume_is_bit_identical(ctx, shared_dir, stop_after):
    # Steps per epoch: ceil(ceil(101 / size) / 4); saves every 3 steps: stop_after=4
    # resumes from step 3 mid-epoch, 7 from step 6 (another epoch at 3-4 ranks).
    reference = _train(ctx, None)
    _train(ctx, shared_dir, stop_after=stop_after)
    resumed = _train(ctx, shared_dir, resume=True)
    assert resumed == reference


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_fp16_error_feedback_residuals_round_trip(ctx, kind):
    from hpcdl.compression import FP16Compressor

    x = np.random.default_rng(ctx.rank).standard_normal(300).astype(np.float32) * 1e-3
    t = x if kind == "numpy" else torch.from_numpy(x)
    a = FP16Compressor(error_feedback=True)
    a.compress(t, name="layer.weight")
    state = a.state_dict()
    assert set(state["residuals"]) == {"layer.weight"}
    b = FP16Compressor(error_feedback=True)
    b.load_state_dict(torch.load(_bytes_io(state), weights_only=True))
    pa, _ = a.compress(t, name="layer.weight")
    pb, _ = b.compress(t, name="layer.weight")
    assert np.array_equal(np.asarray(pa), np.asarray(pb))   # the same carried-over error


def _bytes_io(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_dcp_metadata_reader_refuses_code():
    # DCP's .metadata is a pickle; hpcdl's reader resolves DCP's own classes only.
    import io
    import os
    import pickle

    from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata,
                                                       StorageMeta, TensorProperties,
                                                       TensorStorageMetadata)

    from hpcdl.checkpoint.sharded import _SafeUnpickler

    meta = Metadata(state_dict_metadata={"w": TensorStorageMetadata(
        properties=TensorProperties(dtype=torch.float32), size=torch.Size([4]),
        chunks=[ChunkStorageMetadata(offsets=torch.Size([0]), sizes=torch.Size([4]))])},
        storage_meta=StorageMeta(checkpoint_id=Path("/ck/step-1/dcp")))
    back = _SafeUnpickler(io.BytesIO(pickle.dumps(meta))).load()
    assert back.state_dict_metadata == meta.state_dict_metadata

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refused"):
        _SafeUnpickler(io.BytesIO(pickle.dumps({"x": Boom()}))).load()


def _drivers(ctx: hpcdl.Context, every: int) -> dict:
    """Every checkpoint driver, built without a folder, as a function (so building it can
    raise inside pytest.raises)."""
    from hpcdl.pipeline import Grid, PipelineCheckpoint
    from hpcdl.preduce.checkpoint import PReduceCheckpoint
    from hpcdl.ps.checkpoint import PSCheckpoint

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    return {
        "training": lambda: TrainingCheckpoint(None, every, model=model, optimizer=opt,
                                               comm=ctx.comm),
        "pipeline": lambda: PipelineCheckpoint(None, every, grid=Grid(stages=1), model=model,
                                               optimizer=opt),
        "preduce": lambda: PReduceCheckpoint(None, every, model=model, optimizer=opt,
                                             comm=ctx.comm),
        "ps": lambda: PSCheckpoint(None, every, comm=ctx.comm)}


@pytest.mark.parametrize("kind", ["training", "pipeline", "preduce", "ps"])
def test_every_driver_refuses_a_negative_interval_and_a_save_without_a_folder(ctx, kind):
    """The checks every driver shares (hpcdl/checkpoint/loop.py's CheckpointBase): the
    error names the rank, the operation and the cause."""
    with pytest.raises(hpcdl.InvalidArgumentError,
                       match=rf"rank {ctx.rank}\b.*checkpoint: every=-1: use N >= 0 steps"):
        _drivers(ctx, -1)[kind]()
    ck = _drivers(ctx, 0)[kind]()
    assert ck.manager is None and ck.every == 0 and ck.summary() == {"saves": 0}
    args = (None, None) if kind == "preduce" else ()   # P-Reduce saves at a full sync
    with pytest.raises(hpcdl.InvalidArgumentError,
                       match=rf"rank {ctx.rank}/{ctx.size}\] checkpoint save: no checkpoint "
                             r"directory was given \(directory=None\)"):
        ck.save(*args)
