"""hpcdl's CUDA kernels: sources, loader, NumPy references.

The ``.cu`` files in this folder (also reachable as the top-level ``kernels/``)
are compiled at run time by :mod:`hpcdl.kernels.nvrtc` with hpcdl's own options
(``-ftz=false``: CuPy's ``RawModule(code=...)`` would append ``-ftz=true``), once
per (source, device), to a cubin for the device's architecture that
``cupy.RawModule(path=...)`` loads; ``name_expressions`` name the template
instances, so no ``extern "C"`` wrappers. Nothing here imports CuPy until a
kernel is asked for.

* ``pack.cu``      multi-tensor pack / unpack with fused scale and cast
* ``quantize.cu``  per-chunk absmax, FP16 quantize (+ error feedback), dequantize
* ``reduce.cu``    dst = dst op src for fp16 / bf16 / fp32 payloads, fp32 math (used by
  ``fusion.reduce_into`` only: no collective reduces on the device yet)

Python entry points: :mod:`hpcdl.kernels.fusion` (device arrays), and
:mod:`hpcdl.kernels.reference` (NumPy, the specification the GPU tests check).
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

__all__ = ["KERNEL_DIR", "SOURCES", "CTYPES", "REDUCE_OPS", "NVRTC_OPTIONS", "name_expressions",
           "source", "cuda_include_dirs", "nvrtc_options", "get_module", "get_kernel", "instantiation_source"]

KERNEL_DIR = Path(__file__).resolve().parent
SOURCES = ("pack", "quantize", "reduce")
#: C++ type of each dtype the kernels take
CTYPES = {"float32": "float", "float16": "__half", "bfloat16": "__nv_bfloat16"}
#: op codes of reduce.cu
REDUCE_OPS = {"sum": 0, "prod": 1, "min": 2, "max": 3}
#: every kernel compile uses these (hpcdl.kernels.nvrtc); -ftz=false keeps subnormals as
#: reference.py does, -fmad=false backs up the kernels' explicit _rn arithmetic
NVRTC_OPTIONS = ("-std=c++17", "-ftz=false", "-fmad=false", "-prec-div=true", "-prec-sqrt=true")


def name_expressions(module: str) -> list[str]:
    """Every kernel (template instance) of ``module`` that the Python side launches."""
    if module == "pack":
        return [f"hpcdl_{k}<{t}>" for k in ("pack", "unpack") for t in CTYPES.values()]
    if module == "quantize":
        return ["hpcdl_chunk_absmax", "hpcdl_quantize_fp16", "hpcdl_dequantize_fp16"]
    if module == "reduce":
        return [f"hpcdl_reduce<{t}, {code}>" for t in CTYPES.values()
                for code in REDUCE_OPS.values()]
    raise KeyError(f"no kernel source named {module!r}; choose one of {SOURCES}")


_INCLUDE = re.compile(r'^#include "([\w.]+)"\s*$', re.MULTILINE)


def source(module: str) -> str:
    """``module``.cu with local ``#include "x.cuh"`` lines inlined.

    Inlining (instead of ``-I``) makes CuPy's compile cache key, a hash of the
    source text, change whenever a shared header changes.
    """
    text = (KERNEL_DIR / f"{module}.cu").read_text()
    seen: set[str] = set()

    def inline(m: re.Match) -> str:
        name = m.group(1)
        if name in seen:
            return ""
        seen.add(name)
        return _INCLUDE.sub(inline, (KERNEL_DIR / name).read_text().replace("#pragma once", ""))

    return _INCLUDE.sub(inline, text)


def instantiation_source() -> str:
    """One translation unit instantiating every kernel the loader names (for ``nvcc`` checks)."""
    lines = [f'#include "{m}.cu"' for m in SOURCES]
    refs = [f"    reinterpret_cast<const void*>(&{n})," for m in SOURCES for n in name_expressions(m)]
    return "\n".join(lines + ["const void* hpcdl_all_kernels[] = {", *refs, "};", ""])


def cuda_include_dirs() -> list[str]:
    """Directories holding ``cuda_fp16.h`` for NVRTC, which has no search path of its own.

    Looked for in ``CUDA_PATH``/``CUDA_HOME``, CuPy's idea of the CUDA path,
    the ``nvidia-cuda-runtime`` wheel, then ``/usr/local/cuda``.
    """
    roots = [os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME")]
    try:
        from cupy import _environment

        roots.append(_environment.get_cuda_path())
    except Exception:  # an old or broken CuPy: the other candidates remain
        pass
    try:
        import nvidia.cuda_runtime as wheel  # type: ignore[import-not-found]

        roots.extend(str(Path(p)) for p in wheel.__path__)
    except ImportError:
        pass
    roots.append("/usr/local/cuda")
    found: list[str] = []
    for root in roots:
        if root and (Path(root) / "include" / "cuda_fp16.h").is_file():
            inc = str(Path(root) / "include")
            if inc not in found:
                found.append(inc)
    return found


def nvrtc_options() -> tuple[str, ...]:
    return NVRTC_OPTIONS + tuple(f"-I{d}" for d in cuda_include_dirs()[:1])


_MODULES: dict[tuple[int, str], tuple[Any, dict[str, str]]] = {}
_LOCK = threading.Lock()


def _load(module: str, dev: Any) -> tuple[Any, dict[str, str]]:
    # hpcdl compiles (nvrtc.OPTIONS: -ftz=false, ...) and CuPy only loads the cubin:
    # RawModule(code=...) would append -ftz=true and flush subnormals (docs/gpu.md)
    import tempfile

    import cupy

    from .nvrtc import compile_module

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
