"""Building the CPU harness: the kernel sources + cuda_on_cpu.h -> a shared library.

Three flavours: ``plain`` (-O2), ``asan`` (AddressSanitizer + UndefinedBehaviorSanitizer,
every report fatal) and ``tsan`` (ThreadSanitizer). A sanitizer flavour is loaded into
a Python process started with its runtime in ``LD_PRELOAD`` (:func:`sanitizer_env`).
Builds are cached by a hash of the sources, the flags and the compiler, so a test
session compiles each flavour once; ``kernel_dir`` lets a test build a mutated copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .. import KERNEL_DIR, cuda_include_dirs

__all__ = ["HARNESS_DIR", "FLAVOURS", "compiler", "missing", "sanitizer_missing", "build",
           "sanitizer_env"]

HARNESS_DIR = Path(__file__).resolve().parent
BASE_FLAGS = ("-std=c++17", "-g1", "-fPIC", "-shared", "-pthread", "-Wall", "-Wextra",
              "-Wno-unknown-pragmas",
              # the kernels' _rn intrinsics are single IEEE operations only if nothing fuses
              # them; and subnormals stay (no -ffast-math): the GPU build's -ftz=false
              "-ffp-contract=off", "-fno-fast-math")
FLAVOURS = {
    "plain": ("-O2",),
    "asan": ("-O1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
             "-fno-sanitize-recover=all"),
    "tsan": ("-O1", "-fsanitize=thread"),
}
_RUNTIME = {"asan": "libasan.so", "tsan": "libtsan.so"}


def compiler() -> str | None:
    """The C++ compiler (``$CXX``, else g++), or None."""
    return shutil.which(os.environ.get("CXX", "g++"))


def missing() -> str | None:
    """Why the harness cannot be built here, or None."""
    if compiler() is None:
        return f"no C++ compiler ({os.environ.get('CXX', 'g++')} not found)"
    if _host_include() is None:
        return ("no CUDA headers a host compiler can use (cuda_fp16.h with crt/host_defines.h; "
                "install the CUDA toolkit or set CUDA_PATH)")
    return None


def _host_include() -> str | None:
    # the nvidia-cuda-runtime wheel has cuda_fp16.h but not the crt/ headers it includes
    for d in cuda_include_dirs():
        if (Path(d) / "crt" / "host_defines.h").is_file():
            return d
    return None


def _build_dir() -> Path:
    d = os.environ.get("HPCDL_CPU_BUILD_DIR")
    return Path(d) if d else Path(tempfile.gettempdir()) / f"hpcdl-kernels-cpu-{os.getuid()}"


def build(flavour: str = "plain", kernel_dir: Path | str = KERNEL_DIR) -> Path:
    """The harness library of ``flavour`` built from the sources in ``kernel_dir``."""
    if flavour not in FLAVOURS:
        raise ValueError(f"harness flavour {flavour!r}: choose one of {sorted(FLAVOURS)}")
    why = missing()
    if why:
        raise RuntimeError(f"cannot build the CPU kernel harness: {why}")
    kernel_dir = Path(kernel_dir)
    cxx = compiler()
    inputs = sorted(kernel_dir.glob("*.cu")) + sorted(kernel_dir.glob("*.cuh")) + \
        [HARNESS_DIR / "cuda_on_cpu.h", HARNESS_DIR / "harness.cpp"]
    flags = BASE_FLAGS + FLAVOURS[flavour] + ("-include", str(HARNESS_DIR / "cuda_on_cpu.h"),
                                              "-I", str(kernel_dir),
                                              "-I", str(_host_include()))
    # keyed by content, not by where the sources lie: a mutant copied to a new temporary
    # folder each run reuses its earlier build instead of filling the cache
    h = hashlib.sha256(" ".join((cxx,) + flags).replace(str(kernel_dir), "<src>").encode())
    for p in inputs:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    out = _build_dir() / f"harness-{flavour}-{h.hexdigest()[:16]}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    cmd = [cxx, *flags, str(HARNESS_DIR / "harness.cpp"), "-o", str(tmp)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"building the CPU kernel harness ({flavour}) failed:\n"
                           f"{' '.join(cmd)}\n{res.stderr[-6000:]}")
    os.replace(tmp, out)  # atomic: a concurrent build of the same key is harmless
    return out


def _runtime(flavour: str) -> str:
    # g++ prints the bare name back when it has no such library
    return subprocess.run([compiler(), f"-print-file-name={_RUNTIME[flavour]}"],
                          capture_output=True, text=True, timeout=60).stdout.strip()


def sanitizer_missing(flavour: str) -> str | None:
    """Why ``flavour`` cannot run here (no compiler, headers or sanitizer runtime), or None."""
    why = missing()
    if why or flavour == "plain":
        return why
    if not Path(_runtime(flavour)).is_absolute():
        return f"the compiler has no {_RUNTIME[flavour]} (install libasan/libtsan)"
    return None


def sanitizer_env(flavour: str) -> dict[str, str]:
    """Environment for a Python process that loads a sanitizer build (empty for plain)."""
    if flavour == "plain":
        return {}
    env = {"LD_PRELOAD": _runtime(flavour)}
    if flavour == "asan":
        # Python and NumPy leak by design at exit; UBSan is fatal via -fno-sanitize-recover
        env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1:allocator_may_return_null=1"
        env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    else:
        env["TSAN_OPTIONS"] = "halt_on_error=1:abort_on_error=1:report_signal_unsafe=0"
    return env
