"""Where a server keeps its shard and optimizer state: in memory or on disk.

``DiskStore(path)`` maps each array to a file ``<name>.bin`` with ``np.memmap``,
so a shard larger than the server's memory is served from the page cache.
``commit(meta)`` makes the files durable and then replaces ``manifest.json``
atomically (write a temporary file, fsync, ``os.replace``): the manifest names
every array with its dtype, size and CRC-32. Opening a folder that holds a
manifest checks every file against it and continues from it; a file that was
changed after the last commit (a server killed mid-update) is reported by name
instead of being served silently.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_text
from ..errors import HpcdlError, InvalidArgumentError

__all__ = ["MemoryStore", "DiskStore", "StoreError", "make_store"]

_CRC_BLOCK = 1 << 24


class StoreError(HpcdlError):
    """The disk store is unusable: missing file, wrong size, checksum mismatch."""


class MemoryStore:
    """Arrays in RAM; ``commit`` only records ``meta`` (nothing survives the process)."""

    kind = "memory"

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.meta: dict[str, Any] = {}
        self.reopened = False

    def array(self, name: str, size: int, dtype: np.dtype, fill: float = 0.0) -> np.ndarray:
        if name not in self.arrays:
            self.arrays[name] = np.full(size, fill, dtype=dtype)
        return self.arrays[name]

    def commit(self, meta: dict[str, Any] | None = None) -> None:
        if meta is not None:
            self.meta = dict(meta)

    def close(self) -> None:
        pass


def _crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CRC_BLOCK):
            crc = zlib.crc32(chunk, crc)
    return crc


class DiskStore:
    """Arrays in ``np.memmap`` files under ``path``; reopened from its manifest if one exists."""

    kind = "disk"

    def __init__(self, path: "str | os.PathLike[str]", rank: int | None = None) -> None:
        self.path = Path(path)
        self.rank = rank
        self.path.mkdir(parents=True, exist_ok=True)
        self.arrays: dict[str, np.memmap] = {}
        self.meta: dict[str, Any] = {}
        self._manifest: dict[str, Any] = {}
        manifest = self.path / "manifest.json"
        self.reopened = manifest.exists()
        if self.reopened:
            self._open(manifest)

    def _open(self, manifest: Path) -> None:
        try:
            doc = json.loads(manifest.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read {manifest}: {exc}", rank=self.rank,
                             op="ps.store.open") from None
        self.meta = dict(doc.get("meta", {}))
        self._manifest = doc.get("arrays", {})
        for name, entry in self._manifest.items():
            f = self.path / f"{name}.bin"
            if not f.exists():
                raise StoreError(f"{f} is listed in the manifest but missing", rank=self.rank,
                                 op="ps.store.open")
            want = entry["size"] * np.dtype(entry["dtype"]).itemsize
            if f.stat().st_size != want:
                raise StoreError(f"{f} holds {f.stat().st_size} bytes, the manifest says "
                                 f"{want}", rank=self.rank, op="ps.store.open")
            got = _crc(f)
            if got != entry["crc32"]:
                raise StoreError(f"checksum mismatch in {f}: crc32 {got:#010x}, the manifest "
                                 f"says {entry['crc32']:#010x} (changed after the last commit, "
                                 "e.g. a server killed mid-update)", rank=self.rank,
                                 op="ps.store.open")

    def array(self, name: str, size: int, dtype: np.dtype, fill: float = 0.0) -> np.ndarray:
        if name in self.arrays:
            return self.arrays[name]
        if not name.replace("_", "").isalnum():
            raise InvalidArgumentError(f"array name {name!r} must be alphanumeric",
                                       rank=self.rank, op="ps.store")
        f = self.path / f"{name}.bin"
        dtype = np.dtype(dtype)
        entry = self._manifest.get(name)
        if entry is not None:
            if entry["size"] != size or np.dtype(entry["dtype"]) != dtype:
                raise StoreError(f"{f} holds {entry['size']} x {entry['dtype']}, this server "
                                 f"needs {size} x {dtype.name} (a different model or number "
                                 "of servers?)", rank=self.rank, op="ps.store.open")
            arr = np.memmap(f, dtype=dtype, mode="r+", shape=(size,)) if size else \
                np.zeros(0, dtype)
        else:
            if size:
                arr = np.memmap(f, dtype=dtype, mode="w+", shape=(size,))
                if fill:
                    arr[...] = fill
            else:
                f.write_bytes(b"")
                arr = np.zeros(0, dtype)
        self.arrays[name] = arr
        return arr

    def has(self, name: str) -> bool:
        return name in self._manifest

    def commit(self, meta: dict[str, Any] | None = None) -> None:
        """Flush every array, then atomically publish a manifest with their checksums."""
        if meta is not None:
            self.meta = dict(meta)
        arrays = {}
        for name, arr in self.arrays.items():
            f = self.path / f"{name}.bin"
            if isinstance(arr, np.memmap):
                arr.flush()
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            arrays[name] = {"dtype": arr.dtype.name, "size": int(arr.size), "crc32": _crc(f)}
        atomic_write_text(self.path / "manifest.json",
                          json.dumps({"arrays": arrays, "meta": self.meta}, indent=1))
        self._manifest = arrays

    def close(self) -> None:
        for arr in self.arrays.values():
            if isinstance(arr, np.memmap):
                arr.flush()
        self.arrays.clear()


def make_store(store: Any, path: Any, server_index: int, rank: int) -> "MemoryStore | DiskStore":
    """``"memory"`` / ``"disk"`` (with ``path``; each server uses ``path/server<i>``) or a
    store object."""
    if store == "memory":
        return MemoryStore()
    if store == "disk":
        if path is None:
            raise InvalidArgumentError("store='disk' needs path=", rank=rank, op="ps.setup")
        return DiskStore(Path(path) / f"server{server_index}", rank=rank)
    if hasattr(store, "array") and hasattr(store, "commit"):
        return store
    raise InvalidArgumentError(f"store={store!r}; use 'memory' or 'disk'", rank=rank,
                               op="ps.setup")
