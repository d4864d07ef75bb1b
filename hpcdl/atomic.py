"""Durable files: write under a temporary name, fsync, rename, fsync the folder.

The one way hpcdl replaces a file that another process (or the next job) reads:
checkpoints and their manifests, the parameter server's store manifest, tuning
tables, the online tuner's cache and the cost model's measurements.

A crash (SIGKILL, node failure, a full disk) at any instant leaves either the
old file or the complete new one under the final name, never a half-written
file: ``rename`` within one folder is atomic on POSIX filesystems, and the
fsyncs make the data and the rename survive a power loss too (the folder's
fsync persists its entry). The temporary name carries the process id, so two
processes writing the same file at once each rename a complete file of their own.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text", "fsync_dir"]


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


def atomic_write_text(path: "str | os.PathLike[str]", text: str) -> None:
    """:func:`atomic_write` of ``text`` in UTF-8."""
    atomic_write(path, text.encode("utf-8"))
