"""The kernel sources and how they are compiled: names, options, include folders.

A leaf of :mod:`hpcdl.kernels` (the compiler, :mod:`hpcdl.kernels.nvrtc`, and the
loader, :mod:`hpcdl.kernels.loader`, both read it).
"""


from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["KERNEL_DIR", "SOURCES", "CTYPES", "REDUCE_OPS", "NVRTC_OPTIONS", "name_expressions",
           "source", "cuda_include_dirs", "nvrtc_options", "instantiation_source"]

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
