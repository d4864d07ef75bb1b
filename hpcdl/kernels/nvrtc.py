"""Compiling the kernels with NVRTC under hpcdl's own options (no GPU needed).

CuPy's ``RawModule(code=...)`` appends ``-ftz=true`` after the caller's options and
NVRTC obeys the last one, so kernels compiled that way flush subnormals to zero
and differ from ``reference.py``. hpcdl therefore compiles the source itself,
with :data:`OPTIONS` (``-ftz=false``, ``-fmad=false``, IEEE division and square
root), and hands CuPy the finished cubin: what runs on a GPU is exactly what
``tests/test_kernels_ptx.py`` compiles and inspects in CI for sm_80 and sm_90.

NVRTC is found in the ``nvidia-cuda-nvrtc-cu12`` wheel (the ``cuda`` extra), then
``$CUDA_PATH``/``$CUDA_HOME``/``/usr/local/cuda``'s lib64, then the loader's path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from .sources import NVRTC_OPTIONS, cuda_include_dirs, name_expressions, source

__all__ = ["OPTIONS", "NvrtcError", "Compiled", "find_library", "compile_module", "version"]

#: every compile of a kernel uses these (plus -arch and -I); see docs/gpu.md, "Flush to zero"
OPTIONS: tuple[str, ...] = NVRTC_OPTIONS


class NvrtcError(RuntimeError):
    """NVRTC is missing or rejected a kernel source (the message carries its log)."""


@dataclass(frozen=True)
class Compiled:
    image: bytes                 # cubin for sm_XY, PTX for compute_XY
    lowered: dict[str, str]      # name expression -> mangled name in the image
    options: tuple[str, ...]     # exactly what NVRTC was given
    log: str


def find_library() -> str | None:
    """Path (or loader name) of libnvrtc, or None."""
    cands: list[str] = []
    try:
        import nvidia.cuda_nvrtc as wheel  # type: ignore[import-not-found]

        for p in wheel.__path__:
            cands += sorted(str(f) for f in (Path(p) / "lib").glob("libnvrtc.so.*")
                            if "builtins" not in f.name and ".alt." not in f.name)
    except ImportError:
        pass
    for root in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root:
            cands += sorted(str(f) for f in (Path(root) / "lib64").glob("libnvrtc.so*"))
    for c in cands:
        if Path(c).is_file():
            return c
    return ctypes.util.find_library("nvrtc")


_LIB: ctypes.CDLL | None = None
_LOCK = threading.Lock()


def _lib() -> ctypes.CDLL:
    global _LIB
    with _LOCK:
        if _LIB is None:
            path = find_library()
            if path is None:
                raise NvrtcError("NVRTC not found: pip install nvidia-cuda-nvrtc-cu12 (hpcdl[cuda]) "
                                 "or set CUDA_PATH to a CUDA toolkit")
            lib = ctypes.CDLL(path)
            lib.nvrtcGetErrorString.restype = ctypes.c_char_p
            _LIB = lib
        return _LIB


def version() -> tuple[int, int]:
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(_lib().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def _check(rc: int, what: str, log: str = "") -> None:
    if rc != 0:
        msg = _lib().nvrtcGetErrorString(rc).decode()
        raise NvrtcError(f"{what} failed: {msg}" + (f"\n{log}" if log else ""))


def _get(prog: ctypes.c_void_p, size_fn: str, get_fn: str) -> bytes:
    lib = _lib()
    n = ctypes.c_size_t()
    _check(getattr(lib, size_fn)(prog, ctypes.byref(n)), size_fn)
    buf = ctypes.create_string_buffer(n.value)
    _check(getattr(lib, get_fn)(prog, buf), get_fn)
    return buf.raw[:n.value]


def compile_module(module: str, arch: str, extra: tuple[str, ...] = ()) -> Compiled:
    """``module``.cu for ``arch`` (``sm_90``: cubin; ``compute_90``: PTX) with :data:`OPTIONS`."""
    lib = _lib()
    incs = cuda_include_dirs()
    options = OPTIONS + (f"-arch={arch}",) + tuple(f"-I{d}" for d in incs[:1]) + tuple(extra)
    prog = ctypes.c_void_p()
    _check(lib.nvrtcCreateProgram(ctypes.byref(prog), source(module).encode(),
                                  f"{module}.cu".encode(), 0, None, None), "nvrtcCreateProgram")
    try:
        names = name_expressions(module)
        for n in names:
            _check(lib.nvrtcAddNameExpression(prog, n.encode()), "nvrtcAddNameExpression")
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        rc = lib.nvrtcCompileProgram(prog, len(options), opts)
        log = _get(prog, "nvrtcGetProgramLogSize", "nvrtcGetProgramLog").rstrip(b"\0").decode()
        _check(rc, f"compiling {module}.cu for {arch} with {' '.join(options)}", log)
        if arch.startswith("sm_"):
            image = _get(prog, "nvrtcGetCUBINSize", "nvrtcGetCUBIN")
        else:
            image = _get(prog, "nvrtcGetPTXSize", "nvrtcGetPTX").rstrip(b"\0")
        lowered = {}
        for n in names:
            out = ctypes.c_char_p()
            _check(lib.nvrtcGetLoweredName(prog, n.encode(), ctypes.byref(out)),
                   f"nvrtcGetLoweredName({n})")
            lowered[n] = out.value.decode()
        return Compiled(image, lowered, options, log)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
