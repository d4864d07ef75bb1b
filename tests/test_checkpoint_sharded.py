"""CheckpointManager with sharded state: DCP inside the same atomic, checksummed folder.

An FSDP2 model (``fully_shard`` over the "hpcdl" backend) holds one shard of each
parameter per rank; ``save(..., sharded=)`` writes the shards through DCP into the
checkpoint folder, the manifest covers DCP's files, and ``load(sharded=)`` reads
them back, resharded into whatever layout the caller passes (here also a plain,
unsharded model: every rank then reads whole tensors).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch.distributed.fsdp import fully_shard

import hpcdl
from hpcdl.checkpoint import CheckpointManager
from hpcdl.checkpoint.manager import CheckpointError
from helpers.torch_backend_util import world

torch.set_num_threads(1)


def net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    # 7 and 13 rows: shards of unequal size at 2, 3 and 4 ranks
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 13))


@pytest.fixture
def shared_dir(ctx, tmp_path):
    """One folder for every rank (rank 0's tmp_path; all ranks run on this machine)."""
    world()   # the default "hpcdl" process group that DCP runs over
    return Path(ctx.comm.bcast_object(str(tmp_path), root=0)) / "ck"


def save_fsdp(manager: CheckpointManager, ctx, step: int, seed: int) -> torch.nn.Module:
    """Save a sharded copy of ``net(seed)``; return the unsharded reference."""
    ref = net(seed)
    sharded = copy.deepcopy(ref)
    fully_shard(sharded)
    shared = {"step": step} if ctx.rank == 0 else None
    manager.save(step, shared, {"rank": ctx.rank}, sharded={"model": sharded.state_dict()})
    return ref


def load_plain(manager: CheckpointManager) -> tuple[torch.nn.Module, int]:
    plain = net(99)   # other weights: everything must come from the checkpoint
    state = {"model": plain.state_dict()}
    loaded = manager.load(sharded=state)
    assert loaded is not None
    plain.load_state_dict(state["model"])
    return plain, loaded.step


def assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p.detach(), q.detach()), f"{name} not restored exactly"


def test_sharded_state_round_trips_and_reshards(ctx, shared_dir):
    m = CheckpointManager(shared_dir, keep=2)
    ref = save_fsdp(m, ctx, 5, seed=1)
    manifest = m.verify(shared_dir / "step-00000005")
    assert manifest["sharded"] is True
    assert "sharded/.metadata" in manifest["files"]
    assert sum(f.endswith(".distcp") for f in manifest["files"]) == ctx.size  # one per rank
    # Into a plain model: every rank reads whole tensors (resharded from size shards to 1).
    plain, step = load_plain(m)
    assert step == 5
    assert_same(plain, ref)
    # Into a fresh FSDP2 model: each rank gets its own shard back.
    fresh = net(98)
    fully_shard(fresh)
    state = {"model": fresh.state_dict()}
    m.load(sharded=state)
    fresh.load_state_dict(state["model"])
    full = {n: p.detach() for n, p in ref.named_parameters()}
    for name, p in fresh.named_parameters():
        local = p.to_local().detach()
        chunks = torch.chunk(full[name], ctx.size)   # FSDP2's dim-0 layout
        rows = chunks[ctx.rank] if ctx.rank < len(chunks) else full[name][:0]
        assert torch.equal(local, rows), f"rank {ctx.rank}: shard of {name}"


def test_corrupt_shard_falls_back_to_previous(ctx, shared_dir, capsys):
    m = CheckpointManager(shared_dir, keep=2)
    older = save_fsdp(m, ctx, 1, seed=1)
    save_fsdp(m, ctx, 2, seed=2)
    ctx.comm.barrier()
    if ctx.rank == 0:
        shard = shared_dir / "step-00000002" / "sharded" / f"__{ctx.size - 1}_0.distcp"
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    ctx.comm.barrier()
    plain, step = load_plain(m)
    assert step == 1
    assert_same(plain, older)
    if ctx.rank == 0:   # the damaged file is named, with the rank that checked it: its writer
        k = ctx.size - 1
        assert (f"sharded/__{k}_0.distcp: sha256 does not match the manifest (corrupt) "
                f"(checked by rank {k})") in capsys.readouterr().err


def test_tampered_metadata_is_refused_and_runs_nothing(ctx, shared_dir):
    """A .metadata whose unpickling would create a file (io.FileIO reached through
    torch.distributed.checkpoint.filesystem), vouched for by the manifest: every rank
    refuses it naming the file, and no file is created."""
    import json

    from hpcdl.checkpoint.files import sha256_file
    from test_checkpoint_safety import _file_creating_pickle

    m = CheckpointManager(shared_dir, keep=2)
    save_fsdp(m, ctx, 1, seed=1)
    target = shared_dir / "pwned"
    folder = shared_dir / "step-00000001"
    ctx.comm.barrier()
    if ctx.rank == 0:
        meta = folder / "sharded" / ".metadata"
        meta.write_bytes(_file_creating_pickle(str(target)))
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["files"]["sharded/.metadata"] = {"sha256": sha256_file(meta),
                                                  "bytes": meta.stat().st_size}
        (folder / "manifest.json").write_text(json.dumps(manifest))
    ctx.comm.barrier()
    with pytest.raises(CheckpointError, match=rf"rank {ctx.rank}/{ctx.size}\] checkpoint load: "
                       rf"could not read {folder / 'sharded'}: .*DCP metadata names "
                       r"torch.distributed.checkpoint.filesystem.io.FileIO.*\(refused\)"):
        load_plain(m)
    ctx.comm.barrier()
    assert not target.exists()


def test_sharded_must_be_given_everywhere_and_exist(ctx, shared_dir):
    m = CheckpointManager(shared_dir, keep=2)
    m.save(3, {"step": 3} if ctx.rank == 0 else None, None)   # no sharded part
    with pytest.raises(CheckpointError, match=f"rank {ctx.rank}/{ctx.size}.*holds no sharded "
                       "state"):
        m.load(sharded={"model": net(0).state_dict()})
    if ctx.size > 1:
        ask = {"model": net(0).state_dict()} if ctx.rank == 1 else None
        with pytest.raises(CheckpointError, match=f"rank {ctx.rank}/{ctx.size}.*"
                           r"sharded= given on rank\(s\) 1 only"):
            m.save(4, None, None, sharded=ask)


@pytest.mark.mpi(min_size=2)
def test_sharded_state_needs_a_manager_over_every_rank(ctx, shared_dir):
    # DCP runs over torch.distributed's default group: a subgroup's manager cannot use it.
    sub = hpcdl.subgroup([0, 1])
    if sub is None:
        return
    m = CheckpointManager(shared_dir / "sub", comm=sub)
    if ctx.size == 2:   # the subgroup is every rank: allowed
        m.save(1, {"step": 1} if sub.rank == 0 else None, None,
               sharded={"model": net(0).state_dict()})
        return
    with pytest.raises(CheckpointError, match=f"rank {sub.rank}/2.*needs a manager over every "
                       f"rank \\(this one spans 2 of {ctx.size}\\)"):
        m.save(1, {"step": 1} if sub.rank == 0 else None, None,
               sharded={"model": net(0).state_dict()})
