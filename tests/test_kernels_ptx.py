"""What a GPU will run, checked without one: the production NVRTC compile for sm_80 and sm_90.

hpcdl compiles the kernels itself (hpcdl/kernels/nvrtc.py) and CuPy only loads the
cubin, so these checks inspect exactly the code a GPU runs: every module compiles
with the production options; no flush-to-zero instruction anywhere (-ftz=false,
tested against a -ftz=true compile that has them); each ``.entry`` parameter list
matches the argument tuple fusion.py passes (count, width, integer or float); the
resource budget from ptxas (no spills, no local memory, registers and shared memory
under the bounds below); ``.maxntid`` equals the threads hpcdl launches.
Skipped, with the reason, where NVRTC is not installed (pip nvidia-cuda-nvrtc-cu12).
"""

from __future__ import annotations

import functools
import os
import re
import sys
import types

import numpy as np
import pytest

from hpcdl.kernels import SOURCES, name_expressions, nvrtc
from hpcdl.kernels.launch_args import (GRID_PER_SM, THREADS, args_for, multi_tensor_grid,
                                       reduce_grid)

pytestmark = pytest.mark.skipif(nvrtc.find_library() is None,
                                reason="NVRTC not installed (pip install nvidia-cuda-nvrtc-cu12)")
ARCHS = ["80", "90"]
#: at most 64 registers: 4 blocks of 256 threads per SM (half occupancy) at least
MAX_REGISTERS = 64
#: static shared memory per block: chunk_absmax's 8 warp maxima, with room
MAX_SHARED_BYTES = 1024
_PTX_TYPE = {".u64": (8, "i"), ".s64": (8, "i"), ".b64": (8, "i"), ".u32": (4, "i"),
             ".s32": (4, "i"), ".b32": (4, "i"), ".f32": (4, "f"), ".f64": (8, "f")}


@pytest.fixture(autouse=True)
def _serial_only(request):
    if request.config.getoption("--with-mpi", default=False):
        pytest.skip("compile checks: no MPI involved, the same in every pass: serial pass only")


@functools.lru_cache(maxsize=None)
def _compile(module: str, arch: str, extra: tuple[str, ...] = ()) -> nvrtc.Compiled:
    return nvrtc.compile_module(module, arch, extra)


def _entries(ptx: str) -> dict[str, tuple[list[str], str]]:
    """mangled name -> (parameter types, the directives between ')' and '{')."""
    out = {}
    for m in re.finditer(r"\.entry\s+(\w+)\s*\(([^)]*)\)([^{]*)\{", ptx):
        types = re.findall(r"\.param\s+(\.\w+)", m.group(2))
        out[m.group(1)] = (types, m.group(3))
    return out


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("module", SOURCES)
def test_module_compiles_with_production_options(module, arch):
    cubin = _compile(module, f"sm_{arch}")
    assert cubin.image[:4] == b"\x7fELF"
    assert "-ftz=false" in cubin.options and "-fmad=false" in cubin.options
    assert set(cubin.lowered) == set(name_expressions(module))


@pytest.mark.parametrize("module", SOURCES)
def test_no_flush_to_zero_in_the_production_ptx(module):
    ptx = _compile(module, "compute_90").image.decode()
    assert ".ftz" not in ptx, [ln for ln in ptx.splitlines() if ".ftz" in ln][:5]
    # the check sees a flushing build: -ftz=true last, as CuPy's RawModule(code=) appends it
    flushed = _compile(module, "compute_90", ("-ftz=true",)).image.decode()
    assert ".ftz" in flushed


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("module", SOURCES)
def test_entry_parameters_match_the_launch_arguments(module, arch):
    c = _compile(module, f"compute_{arch}")
    entries = _entries(c.image.decode())
    for name, mangled in c.lowered.items():
        types, _ = entries[mangled]
        args = args_for(name)
        got = [_PTX_TYPE[t] for t in types]
        want = [(np.asarray(a).dtype.itemsize, "f" if np.asarray(a).dtype.kind == "f" else "i")
                for a in args]
        assert got == want, f"{name}: PTX parameters {types}, fusion.py passes " \
                            f"{[np.asarray(a).dtype.name for a in args]}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("module", SOURCES)
def test_launch_bounds_equal_the_threads_hpcdl_launches(module, arch):
    assert THREADS % 32 == 0 and THREADS <= 1024
    c = _compile(module, f"compute_{arch}")
    entries = _entries(c.image.decode())
    for name, mangled in c.lowered.items():
        m = re.search(r"\.maxntid\s+(\d+),\s*(\d+),\s*(\d+)", entries[mangled][1])
        assert m, f"{name} declares no __launch_bounds__"
        assert tuple(int(g) for g in m.groups()) == (THREADS, 1, 1), name


def test_grids_stay_within_launch_limits():
    # 2**31 - 1 blocks in x on sm_30+; hpcdl launches at most GRID_PER_SM per SM
    for sms in (1, 108, 132, 1000):
        assert multi_tensor_grid(2**31 - 1, sms) == sms * GRID_PER_SM
        assert reduce_grid(2**40, 2, sms) == sms * GRID_PER_SM
    assert multi_tensor_grid(0, 132) == 1 and reduce_grid(1, 4, 132) == 1


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("module", SOURCES)
def test_resource_budget_from_ptxas(module, arch):
    log = _compile(module, f"sm_{arch}", ("-Xptxas=-v",)).log
    blocks = re.split(r"Compiling entry function '(\w+)'", log)[1:]
    assert len(blocks) // 2 == len(name_expressions(module)), log
    for mangled, info in zip(blocks[::2], blocks[1::2]):
        frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill "
                          r"loads", info)
        regs = re.search(r"Used (\d+) registers", info)
        smem = re.search(r"(\d+) bytes smem", info)
        assert frame and regs, info
        assert frame.groups() == ("0", "0", "0"), f"{mangled}: local memory or spills: {info}"
        assert int(regs.group(1)) <= MAX_REGISTERS, f"{mangled}: {info}"
        assert (int(smem.group(1)) if smem else 0) <= MAX_SHARED_BYTES, f"{mangled}: {info}"


def test_the_loader_hands_cupy_hpcdls_own_cubin(monkeypatch):
    # No GPU here: a stand-in cupy records what the loader gives RawModule. It must be the
    # cubin of nvrtc.compile_module for the device's sm_XY (-ftz=false), loaded by path (so
    # CuPy adds no options), and kernels must be found by their lowered names.
    import hpcdl.kernels as kernels

    seen = {}

    class Device:
        def __init__(self, i=0):
            self.id, self.compute_capability = i, "80"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class RawModule:
        def __init__(self, path):
            with open(path, "rb") as f:
                seen["image"] = f.read()
            seen["path"] = path

        def get_function(self, name):
            return ("function", name)

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(Device=Device)
    fake.RawModule = RawModule
    monkeypatch.setitem(sys.modules, "cupy", fake)
    kernels.forget_modules()   # nothing loaded before counts, and nothing of the fake stays
    try:
        fn = kernels.get_kernel("reduce", "hpcdl_reduce<__half, 2>", 0)
        want = _compile("reduce", "sm_80")
        assert fn == ("function", want.lowered["hpcdl_reduce<__half, 2>"])
        assert seen["image"] == want.image and "-ftz=false" in want.options
        assert not os.path.exists(seen["path"])  # the temporary cubin is removed
        with pytest.raises(KeyError, match="no kernel 'hpcdl_reduce<double, 0>'"):
            kernels.get_kernel("reduce", "hpcdl_reduce<double, 0>", 0)
    finally:
        kernels.forget_modules()
