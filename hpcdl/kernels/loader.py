"""Compile once per (source, device) and load with CuPy; nothing imports CuPy until a
kernel is asked for."""

from __future__ import annotations

import os
import tempfile
import threading
from typing import Any

from .nvrtc import compile_module

__all__ = ["get_module", "get_kernel", "forget_modules"]

_MODULES: dict[tuple[int, str], tuple[Any, dict[str, str]]] = {}
_LOCK = threading.Lock()


def _load(module: str, dev: Any) -> tuple[Any, dict[str, str]]:
    # hpcdl compiles (nvrtc.OPTIONS: -ftz=false, ...) and CuPy only loads the cubin:
    # RawModule(code=...) would append -ftz=true and flush subnormals (docs/gpu.md)
    import cupy

    compiled = compile_module(module, f"sm_{dev.compute_capability}")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.image)
    try:
        mod = cupy.RawModule(path=f.name)
        mod.get_function(next(iter(compiled.lowered.values())))  # loads the image now
    finally:
        os.unlink(f.name)
    return mod, compiled.lowered


def get_module(module: str, device: int | None = None) -> Any:
    """The loaded ``cupy.RawModule`` of ``module`` for ``device`` (default: current)."""
    return _module(module, device)[0]


def _module(module: str, device: int | None) -> tuple[Any, dict[str, str]]:
    import cupy

    dev = cupy.cuda.Device(device) if device is not None else cupy.cuda.Device()
    key = (dev.id, module)
    entry = _MODULES.get(key)
    if entry is None:
        with _LOCK, dev:
            entry = _MODULES.get(key)
            if entry is None:
                entry = _MODULES[key] = _load(module, dev)
    return entry


def get_kernel(module: str, name: str, device: int | None = None) -> Any:
    """One kernel by its name expression, e.g. ``get_kernel("pack", "hpcdl_pack<float>")``."""
    mod, lowered = _module(module, device)
    if name not in lowered:
        raise KeyError(f"{module}.cu has no kernel {name!r}; it has {sorted(lowered)}")
    return mod.get_function(lowered[name])


def forget_modules() -> None:
    """Drop every loaded module, so the next request compiles and loads again (tests that
    swap in a stand-in CuPy; a process that changed its CUDA context)."""
    with _LOCK:
        _MODULES.clear()
