"""The order of the checkpoints in one folder: newest means latest *saved*.

Step numbers do not say which checkpoint is newest: a run resumed from an older
checkpoint (its newest was corrupt) saves lower steps than the ones it abandoned,
and a folder may hold another run's. Each manifest therefore holds a ``serial``,
one more than any other in the folder when it was written. Pruning keeps the
newest ``keep`` saves by serial, the one just written always among them, and a
resume tries ``latest`` first, then the rest by serial.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

__all__ = ["complete", "order", "candidates", "next_serial", "prune"]


def _step_of(folder: Path) -> int:
    try:
        return int(folder.name.removeprefix("step-"))
    except ValueError:
        return -1


def complete(directory: Path) -> list[Path]:
    """Every finished checkpoint folder (``step-N``, not a save's ``step-N.tmp``)."""
    return [p for p in directory.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")]


def order(folder: Path) -> tuple[int, float, int]:
    """Sort key, newest save last: the manifest's serial (then its time, for manifests
    written before serials existed); folders without a readable manifest first."""
    try:
        m = json.loads((folder / "manifest.json").read_text())
        return int(m.get("serial", 0)), float(m.get("time", 0.0)), _step_of(folder)
    except (OSError, ValueError, TypeError, AttributeError):
        return -1, 0.0, _step_of(folder)


def candidates(directory: Path) -> list[Path]:
    """Checkpoint folders newest first: the ``latest`` pointer's, then by save order."""
    found: list[Path] = []
    pointer = directory / "latest"
    if pointer.is_file():
        name = pointer.read_text().strip()
        if name.startswith("step-") and "/" not in name and (directory / name).is_dir():
            found.append(directory / name)
    for p in sorted(complete(directory), key=order, reverse=True):
        if p not in found:
            found.append(p)
    return found


def next_serial(directory: Path) -> int:
    """One more than every serial in the folder: the serial of a save made now."""
    return 1 + max((order(p)[0] for p in complete(directory)), default=0)


def prune(directory: Path, keep: int, just_written: Path) -> None:
    """Delete all but the newest ``keep`` saves; never ``just_written``."""
    others = sorted((p for p in complete(directory) if p != just_written), key=order)
    for old in others[:max(0, len(others) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
