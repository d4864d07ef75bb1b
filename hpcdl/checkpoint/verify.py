"""Checking a checkpoint's files against its manifest, every rank its share at once.

Hashing is the slow part of a resume: a sharded checkpoint of a large model is
gigabytes of DCP files, and one rank hashing all of them while the others wait
takes minutes (long enough to trip ``HPCDL_TIMEOUT``). So each file has an
owner rank that checks it: ``rank-K.pt`` and DCP's ``__K_*.distcp`` (written by
rank K) belong to rank ``K % size``, so at the same rank count every rank checks
the files it wrote and reads next; everything else (``shared.pt``, DCP's
``.metadata``) to rank 0. The ranks then exchange what they found, so all of
them take the same decision. The same split hashes DCP's files at save time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .files import sha256_file

__all__ = ["FORMAT", "SHARDED", "rank_file", "owner", "read_manifest", "check_files",
           "verify_files", "hash_files"]

FORMAT = 1
SHARDED = "sharded"   # the DCP part's folder inside a checkpoint

_WRITER = re.compile(r"^(?:rank-(\d+)\.pt|" + SHARDED + r"/__(\d+)_\d+\.distcp)$")


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


def owner(fname: str, size: int) -> int:
    """The rank (of ``size``) that checks ``fname``: its writer's rank modulo ``size``."""
    m = _WRITER.match(fname)
    return int(m.group(1) or m.group(2)) % size if m else 0


def read_manifest(folder: Path) -> dict[str, Any]:
    """``folder``'s manifest, checked for the files it must list; ``ValueError`` saying
    what is wrong otherwise."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError:
        raise ValueError("no manifest.json (an incomplete save)") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"unreadable manifest.json ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else "?"
        raise ValueError(f"manifest format {found}, expected {FORMAT}")
    expected = {"shared.pt", *(rank_file(r) for r in range(int(manifest["size"])))}
    if manifest.get("sharded"):
        expected |= {f for f in manifest["files"] if f.startswith(SHARDED + "/")}
        if f"{SHARDED}/.metadata" not in expected:
            raise ValueError(f"manifest lists no {SHARDED}/.metadata (DCP's index)")
    if set(manifest["files"]) != expected:
        raise ValueError(f"manifest lists {sorted(manifest['files'])}, expected "
                         f"{sorted(expected)}")
    return manifest


def check_files(folder: Path, listed: dict[str, dict[str, Any]]) -> list[str]:
    """What is wrong with the files ``listed`` (name -> sha256 and bytes) in ``folder``."""
    problems = []
    for fname, meta in sorted(listed.items()):
        path = folder / fname
        if not path.is_file():
            problems.append(f"{fname} is missing")
        elif path.stat().st_size != meta["bytes"]:
            problems.append(f"{fname} holds {path.stat().st_size} bytes, the manifest says "
                            f"{meta['bytes']} (truncated or overwritten)")
        elif sha256_file(path) != meta["sha256"]:
            problems.append(f"{fname}: sha256 does not match the manifest (corrupt)")
    return problems


def verify_files(comm: Any, folder: Path, manifest: dict[str, Any]) -> list[str]:
    """Collective: every rank checks the files it owns; every rank returns the same list
    of problems, each naming the rank that found it (empty: the checkpoint is good)."""
    mine = {f: m for f, m in manifest["files"].items() if owner(f, comm.size) == comm.rank}
    try:
        found = check_files(folder, mine)
    except (OSError, KeyError, TypeError) as exc:   # unreadable, or a malformed manifest
        found = [f"cannot check its files ({type(exc).__name__}: {exc})"]
    everyone = comm.allgather_object(found)
    return [f"{p} (checked by rank {r})" for r, ps in enumerate(everyone) for p in ps]


def hash_files(comm: Any, folder: Path, prefix: str) -> tuple[dict[str, dict[str, Any]],
                                                              str | None]:
    """Collective: sha256 and size of every file in ``folder`` (named ``prefix/name``),
    each hashed by its owner rank; every rank returns all of them, or the first error."""
    listed: dict[str, dict[str, Any]] = {}
    error = None
    try:
        for p in sorted(folder.iterdir()):
            name = f"{prefix}/{p.name}"
            if p.is_file() and owner(name, comm.size) == comm.rank:
                listed[name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    except OSError as exc:
        error = f"rank {comm.rank} could not hash {folder}: {exc}"
    everyone = comm.allgather_object((listed, error))
    errors = [e for _, e in everyone if e]
    return {k: v for d, _ in everyone for k, v in d.items()}, (errors[0] if errors else None)
