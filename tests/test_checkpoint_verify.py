"""A resume checks a checkpoint's files in parallel: every rank hashes its own share
(``rank-K.pt`` on rank K % size, ``shared.pt`` on rank 0), the ranks agree, and a corrupt
file is named with the rank that found it; the newest good checkpoint is loaded."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from helpers.fakes import group_params, on_group

from hpcdl.checkpoint import CheckpointManager
from hpcdl.checkpoint import verify as verify_module


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("group", group_params())
def test_each_rank_checks_its_own_files_and_a_bad_one_is_named(group, monkeypatch, capsys,
                                                               tmp_path):
    hashed: list[tuple[int, str]] = []   # (thread, file): who hashed what
    real = verify_module.sha256_file

    def recording(path):
        hashed.append((threading.get_ident(), str(path)))
        return real(path)

    monkeypatch.setattr(verify_module, "sha256_file", recording)
    base = str(tmp_path)   # rank 0's, under mpiexec

    def body(comm):
        folder = Path(comm.bcast_object(base, root=0)) / "ck"
        m = CheckpointManager(folder, keep=3, comm=comm)
        k = comm.size - 1                  # the rank whose file goes bad
        for step in (1, 2):
            m.save(step, {"w": torch.full((4,), float(step))} if comm.rank == 0 else None,
                   {"rank": comm.rank, "x": torch.randn(50)})
        comm.barrier()
        if comm.rank == 0:
            _flip(folder / "step-00000002" / f"rank-{k:05d}.pt")
        comm.barrier()
        me = threading.get_ident()
        before = len(hashed)
        loaded = m.load()
        comm.barrier()
        mine = sorted(f.split("/ck/")[1] for t, f in hashed[before:] if t == me)
        steps = comm.allgather_object(loaded.step)
        return comm.rank, comm.size, mine, steps

    for rank, size, mine, steps in on_group(group, body):
        assert steps == [1] * size, steps          # every rank fell back to the same one
        own = [f"rank-{rank:05d}.pt"] + (["shared.pt"] if rank == 0 else [])
        assert mine == sorted(f"step-0000000{s}/{f}" for s in (1, 2) for f in own), \
            f"rank {rank} hashed {mine}"
        if rank == 0:
            err = capsys.readouterr().err
            k = size - 1
            assert (f"step-00000002: rank-{k:05d}.pt: sha256 does not match the manifest "
                    f"(corrupt) (checked by rank {k}); trying the previous checkpoint") in err


@pytest.mark.parametrize("saved,now", [(4, 2), (2, 3)])
@pytest.mark.fake_ranks
def test_another_rank_count_shares_the_saved_ranks_files(saved, now, tmp_path):
    """Elastic: the saved ranks' files are checked by rank K % now (all of them, once)."""
    from hpcdl.comm import run_ranks

    folder = tmp_path / "ck"
    run_ranks(saved, lambda comm: CheckpointManager(folder, comm=comm).save(
        5, {"s": 1} if comm.rank == 0 else None, {"r": comm.rank}))
    _flip(folder / "step-00000005" / f"rank-{saved - 1:05d}.pt")
    found = run_ranks(now, lambda comm: verify_module.verify_files(
        comm, folder / "step-00000005", verify_module.read_manifest(folder / "step-00000005")))
    assert found == [[f"rank-{saved - 1:05d}.pt: sha256 does not match the manifest (corrupt) "
                      f"(checked by rank {(saved - 1) % now})"]] * now
