"""What a checkpoint may hold: a save that no resume could load is refused at save time,
naming the rank, the file and the key, on every rank (no hang); DCP's metadata unpickler
resolves an exact list of classes, not whatever a DCP module imported."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from hpcdl.checkpoint import CheckpointError, CheckpointManager, TrainingCheckpoint


@pytest.fixture
def shared_dir(ctx, tmp_path):
    """One folder for every rank (rank 0's tmp_path; all ranks run on this machine)."""
    return Path(ctx.comm.bcast_object(str(tmp_path), root=0)) / "ck"


def _nothing_saved(ctx, folder: Path) -> None:
    ctx.comm.barrier()
    left = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    ctx.comm.barrier()   # before anyone saves again
    assert left == [], left


def test_a_value_weights_only_refuses_is_refused_at_save(ctx, shared_dir):
    m = CheckpointManager(shared_dir)
    shared = {"extra": {"history": [0.5], "best": np.float64(0.9)}} if ctx.rank == 0 else None
    with pytest.raises(CheckpointError, match=rf"rank {ctx.rank}/{ctx.size}\] checkpoint save: "
                       r"rank 0: shared.pt\['extra'\]\['best'\] \(a numpy.float64\) would not "
                       r"load on resume: torch.load\(weights_only=True\) refuses it "
                       r"\(UnpicklingError: Unsupported global"):
        m.save(1, shared, {"rank": ctx.rank})
    _nothing_saved(ctx, shared_dir)
    m.save(1, {"extra": {"best": 0.9}} if ctx.rank == 0 else None, {"rank": ctx.rank})
    assert m.load()["shared"]["extra"]["best"] == 0.9


def test_the_training_loop_names_the_extra_key(ctx, shared_dir):
    model = torch.nn.Linear(3, 2)
    ck = TrainingCheckpoint(shared_dir, 0, model=model,
                            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                            extra={"best": np.float32(0.5)}, signals=())
    with pytest.raises(CheckpointError, match=r"shared.pt\['extra'\]\['best'\] \(a "
                                              r"numpy.float32\) would not load on resume"):
        ck.save()
    _nothing_saved(ctx, shared_dir)


@pytest.mark.parametrize("where", ["rank 0", "last rank"])
def test_an_unpicklable_value_on_one_rank_ends_the_save_on_every_rank(ctx, shared_dir, where):
    bad = 0 if where == "rank 0" else ctx.size - 1
    m = CheckpointManager(shared_dir)
    shared = {"step": 1} if ctx.rank == 0 else None
    local = {"rank": ctx.rank, "hook": (lambda: 0) if ctx.rank == bad else None}
    with pytest.raises(CheckpointError, match=rf"rank {ctx.rank}/{ctx.size}\] checkpoint save: "
                       rf"rank {bad}: rank-{bad:05d}.pt\['hook'\] \(a builtins.function\) "
                       r"cannot be pickled \((PicklingError|AttributeError): .*lambda"):
        m.save(1, shared, local)
    _nothing_saved(ctx, shared_dir)


def _file_creating_pickle(target: str) -> bytes:
    """Protocol 4: ``torch.distributed.checkpoint.filesystem`` + ``io.FileIO`` (STACK_GLOBAL
    resolves the dotted name through the module's ``io`` import), called with
    ``(target, "w")``: unpickling it creates (or truncates) ``target``."""
    def s(text: str) -> bytes:
        raw = text.encode()
        return b"\x8c" + bytes([len(raw)]) + raw     # SHORT_BINUNICODE

    return (b"\x80\x04" + s("torch.distributed.checkpoint.filesystem") + s("io.FileIO")
            + b"\x93" + s(target) + s("w") + b"\x86" + b"R" + b".")


def test_dcp_metadata_with_a_dotted_name_is_refused(tmp_path):
    from hpcdl.checkpoint.sharded import SafeReader

    # the payload works: a plain unpickler creates the file
    probe = tmp_path / "probe"
    pickle.loads(_file_creating_pickle(str(probe))).close()
    assert probe.exists()
    target = tmp_path / "pwned"
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / ".metadata").write_bytes(_file_creating_pickle(str(target)))
    with pytest.raises(pickle.UnpicklingError, match=r"DCP metadata names torch.distributed."
                       r"checkpoint.filesystem.io.FileIO, which a checkpoint has no business "
                       r"loading \(refused\)"):
        SafeReader(str(folder)).read_metadata()
    assert not target.exists()
