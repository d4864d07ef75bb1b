"""The modes of the main job, one module each: ``--mode NAME`` imports ``MODES[NAME]``.

A mode module defines ``add_arguments(parser)`` (its own flags; called for every
mode so ``--help`` lists them all) and ``run(args, ctx, device, data) -> RunResult``
(see :class:`hpcdl.examples.common.RunResult`). ``allreduce`` stays the default.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MODES", "DEFAULT_MODE", "load_mode"]

DEFAULT_MODE = "allreduce"
MODES: dict[str, str] = {
    "allreduce": "hpcdl.examples.modes.allreduce",
    "pipeline": "hpcdl.examples.modes.pipeline",
    "ps-sync": "hpcdl.examples.modes.ps",
    "ps-async": "hpcdl.examples.modes.ps",
    "ssp": "hpcdl.examples.modes.ps",
    "preduce": "hpcdl.examples.modes.preduce",
}


def load_mode(name: str) -> ModuleType:
    if name not in MODES:
        raise SystemExit(f"unknown --mode {name!r}; choose from {', '.join(MODES)}")
    return importlib.import_module(MODES[name])
