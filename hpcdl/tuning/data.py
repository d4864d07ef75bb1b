"""The measurements the cost model is fitted to: where they live and how they load.

Written by ``hpcdl model measure`` (:mod:`hpcdl.model.measure`); read by the fit,
``hpcdl model`` and ``auto``'s model fallback. No MPI here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["load_measurements", "user_measurements_path", "DEFAULT_MEASUREMENTS"]

#: Measured on the 2-core CI VM (Open MPI 5 shared memory); used when you have none.
DEFAULT_MEASUREMENTS = Path(__file__).with_name("default_measurements.json")


def user_measurements_path() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "hpcdl" / "model.json"


def load_measurements(path: Path | None = None) -> dict[str, Any]:
    """The measurements at ``path``; else the user's file; else the shipped default."""
    if path is None:
        path = user_measurements_path()
        if not path.is_file():
            path = DEFAULT_MEASUREMENTS
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("runs"), dict) or not data["runs"]:
        raise ValueError(f"{path}: expected an object with a non-empty 'runs' object "
                         "(write one with 'hpcdl model measure')")
    return data
