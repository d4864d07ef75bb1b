"""Where online tuning keeps what it learned: one JSON file per machine fingerprint.

The folder is ``$HPCDL_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/hpcdl``,
else ``~/.cache/hpcdl`` (where ``hpcdl tune`` writes its table too). The file
``online-<hash>.json`` is named by a hash of the machine fingerprint: the host
name with its digits masked (``node017`` and ``node042`` are the same kind of
machine and share a file on a shared home folder), the CPU model, the number
of logical CPUs, the MPI library's version line and hpcdl's version. Inside,
choices are keyed by communicator layout (ranks per node), dtype and size
class, so one file serves every job shape on that kind of machine.

Only rank 0 reads and writes the file (:mod:`hpcdl.collectives.online`
broadcasts what it read): ranks that see different files, or none, still
agree. A file that cannot be read is treated as empty and rewritten; one that
cannot be written is reported once on stderr and tuning goes on in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import socket
import sys
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..version import __version__

__all__ = ["cache_dir", "fingerprint", "cache_file", "load_choices", "save_choice"]

FORMAT = 1


def cache_dir() -> Path:
    """hpcdl's cache folder: ``$HPCDL_CACHE_DIR``, ``$XDG_CACHE_HOME/hpcdl``, ``~/.cache/hpcdl``."""
    explicit = os.environ.get("HPCDL_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hpcdl"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Processor", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint(mpi_library: str) -> dict[str, Any]:
    """What makes two machines "of the same kind" for tuning purposes."""
    mpi = mpi_library.replace("\x00", "").strip()  # mpi4py's text may end in a NUL
    return {"host": re.sub(r"\d+", "#", socket.gethostname()), "cpu": _cpu_model(),
            "cpus": os.cpu_count() or 1, "mpi": mpi.split("\n")[0],
            "hpcdl": __version__, "format": FORMAT}


def cache_file(fp: dict[str, Any]) -> Path:
    digest = hashlib.sha1(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"online-{digest}.json"


def load_choices(path: Path) -> dict[str, Any]:
    """``{key: {"algorithm": name, "seconds": s, ...}}`` from ``path``; {} when absent or bad."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, dict):
        return {}
    return {k: v for k, v in choices.items() if isinstance(v, dict)
            and isinstance(v.get("algorithm"), str) and isinstance(v.get("seconds"), (int, float))}


_warned: set[str] = set()


def save_choice(path: Path, fp: dict[str, Any], key: str, entry: dict[str, Any]) -> None:
    """Merge ``entry`` under ``key`` into ``path`` (atomic replace; other keys kept)."""
    try:
        choices = load_choices(path)
        choices[key] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"fingerprint": fp, "choices": choices}, indent=1,
                                           sort_keys=True) + "\n")
    except OSError as exc:
        # Tuning still works for this job; only the next job must learn again.
        if str(path) not in _warned:
            _warned.add(str(path))
            sys.stderr.write(f"hpcdl: rank 0: cannot save online tuning to {path}: {exc} "
                             "(set HPCDL_CACHE_DIR to a writable folder)\n")
