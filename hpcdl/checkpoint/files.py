"""Checkpoint files: durable writes (:mod:`hpcdl.atomic`), SHA-256 checksums, torch bytes."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write, fsync_dir

__all__ = ["atomic_write", "fsync_dir", "sha256_file", "sha256_bytes", "torch_bytes",
           "load_torch"]

_CHUNK = 1 << 20


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
