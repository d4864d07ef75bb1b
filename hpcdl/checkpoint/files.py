"""Durable files: write under a temporary name, fsync, rename, fsync the folder.

A crash (SIGKILL, node failure, a full disk) at any instant leaves either the
old file or the complete new one under the final name, never a half-written
file: ``rename`` within one folder is atomic on POSIX filesystems, and the
fsyncs make the data and the rename survive a power loss too (the folder's
fsync persists its entry). Checksums are SHA-256.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_write", "fsync_dir", "sha256_file", "sha256_bytes", "torch_bytes",
           "load_torch"]

_CHUNK = 1 << 20


def fsync_dir(path: "str | os.PathLike[str]") -> None:
    """Persist a folder's entries (a rename or a new file in it)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: "str | os.PathLike[str]", data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: "str | os.PathLike[str]") -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def torch_bytes(obj: Any) -> bytes:
    """``torch.save`` into memory: the checksum is of exactly the bytes written."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_torch(path: "str | os.PathLike[str]") -> Any:
    """``torch.load(weights_only=True)``: tensors, containers and numbers only, no pickle
    of arbitrary objects, so a tampered checkpoint cannot run code."""
    return torch.load(path, map_location="cpu", weights_only=True)
