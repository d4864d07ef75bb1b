"""hpcdl.atomic: the one durable replace (temporary file, fsync, rename, fsync of the folder)
used by checkpoints, the parameter server's manifest, tuning tables and caches."""

from __future__ import annotations

import json
import os
import stat

import pytest

from hpcdl.atomic import atomic_write, atomic_write_text


@pytest.mark.fake_ranks
def test_replaces_whole_and_fsyncs_file_and_folder(tmp_path, monkeypatch):
    target = tmp_path / "t.json"
    target.write_text("old")
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        mode = os.fstat(fd).st_mode
        synced.append("dir" if stat.S_ISDIR(mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write_text(target, json.dumps({"a": 1}))
    assert json.loads(target.read_text()) == {"a": 1}
    assert synced == ["file", "dir"]  # the data before the rename, the folder after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


@pytest.mark.fake_ranks
def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "t.bin"
    target.write_bytes(b"old")

    def fail(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.bin"]


@pytest.mark.fake_ranks
def test_every_durable_writer_uses_it(tmp_path, monkeypatch):
    """The tuning table, the model's measurements, the online cache and the PS manifest
    go through hpcdl.atomic (they used to carry their own copies, three without fsync)."""
    import numpy as np

    from hpcdl import atomic
    from hpcdl.collectives.tune_cache import save_choice
    from hpcdl.model.measure import merge_run
    from hpcdl.ps.store import DiskStore
    from hpcdl.tune import merge_rules

    written: list[str] = []
    real = atomic.atomic_write

    def spy(path, data: bytes) -> None:
        written.append(os.path.basename(path))
        real(path, data)

    monkeypatch.setattr(atomic, "atomic_write", spy)
    merge_rules(tmp_path / "tuning.json", 2, {"float": [[None, "native"]]}, "test")
    merge_run(tmp_path / "model.json", {"ranks": 2, "mpi": "test"})
    save_choice(tmp_path / "cache.json", {"k": 1}, "key", {"algorithm": "ring", "seconds": 1.0})
    store = DiskStore(tmp_path / "s")
    store.array("params", 4, np.float32)
    store.commit()
    store.close()
    assert written == ["tuning.json", "model.json", "cache.json", "manifest.json"]
