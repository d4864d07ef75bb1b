"""The unchanged .cu kernels executed on the CPU (hpcdl/kernels/cpu), against reference.py.

Every kernel instance is compared bit for bit in-process (plain build), then the
same cases run once under AddressSanitizer + UndefinedBehaviorSanitizer and once
under ThreadSanitizer (child processes with the runtime preloaded), and three
known bugs applied to a copy of the sources must each make a check fail.
Skipped, with the reason, where no C++ compiler or no cuda_fp16.h is found.
CPU work without MPI: it runs in the serial pass only.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hpcdl.kernels import SOURCES, name_expressions
from hpcdl.kernels import reference as ref
from hpcdl.kernels.cpu import build
from hpcdl.kernels.cpu.cases import assert_same, cases
from hpcdl.kernels.cpu.runner import CpuMultiTensor, Harness, HarnessError
from hpcdl.kernels.launch_args import THREADS, absmax_args, pack_args, quantize_args, reduce_args
from hpcdl.kernels.layout import FusionLayout

_WHY = build.missing()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"CPU kernel harness: {_WHY}")
_CHECK = build.HARNESS_DIR / "check.py"


@pytest.fixture(autouse=True)
def _serial_only(request):
    if request.config.getoption("--with-mpi", default=False):
        pytest.skip("CPU kernel harness: no MPI involved, the same in every pass: serial pass only")


@pytest.fixture(scope="module")
def harness():
    h = Harness(build.build("plain"))
    yield h
    h.free_all()


def test_harness_launches_every_kernel_the_loader_names(harness):
    assert sorted(harness.kernel_names()) == sorted(n for m in SOURCES for n in name_expressions(m))


@pytest.mark.parametrize("name,case", cases(), ids=[n for n, _ in cases()])
def test_kernel_matches_reference_bit_for_bit(harness, name, case):
    try:
        with np.errstate(all="ignore"):
            case(harness)
    finally:
        harness.free_all()


def test_assert_same_sees_one_flipped_bit():
    a = np.arange(1, 9, dtype=np.float32)
    b = a.copy()
    b.view(np.uint32)[5] ^= 1
    with pytest.raises(AssertionError, match="1 of 8 elements differ; first at 5"):
        assert_same(b, a, "x")
    nan1, nan2 = np.array([np.nan], np.float32), np.array([np.nan], np.float32)
    nan2.view(np.uint32)[0] ^= 1
    assert_same(nan1, nan2, "any NaN")
    with pytest.raises(AssertionError):
        assert_same(nan1, nan2, "payload", nan_payload=True)


def _one_tensor(h):
    x = np.arange(1, 101, dtype=np.float32)
    lay = FusionLayout((x.size,), (x.dtype,), 64)
    return CpuMultiTensor(h, [x], lay), lay


def test_launch_checks_the_argument_list_like_the_entry_parameters(harness):
    mt, lay = _one_tensor(harness)
    out = harness.alloc(lay.total * 4)
    args = mt.head() + pack_args(out, None)
    with pytest.raises(HarnessError, match="takes 7 arguments, got 6"):
        harness.launch("hpcdl_pack<float>", 1, args[:-1])
    wrong = args[:2] + (np.int64(args[2]),) + args[3:]
    with pytest.raises(HarnessError, match="argument 2 has 8 bytes, the kernel's parameter 4"):
        harness.launch("hpcdl_pack<float>", 1, wrong)
    with pytest.raises(HarnessError, match="no kernel named hpcdl_pack<double>"):
        harness.launch("hpcdl_pack<double>", 1, args)
    with pytest.raises(HarnessError, match="block 2048"):
        harness.launch("hpcdl_pack<float>", 1, args, block=2048)
    harness.launch("hpcdl_pack<float>", 2, args)
    np.testing.assert_array_equal(harness.download(out, lay.total, np.float32), np.arange(1, 101))
    harness.free_all()


def test_shuffle_refuses_a_mask_naming_absent_lanes(harness):
    # 100 threads: the last warp has 4 lanes, and chunk_absmax shuffles with 0xffffffff
    mt, lay = _one_tensor(harness)
    out = harness.alloc(lay.nchunks * 4)
    with pytest.raises(HarnessError, match=r"mask 0xffffffff names lanes absent from warp 3 "
                                           r"of block 0 \(present 0x0000000f"):
        harness.launch("hpcdl_chunk_absmax", 1, mt.head() + absmax_args(out), block=100)
    harness.launch("hpcdl_chunk_absmax", 1, mt.head() + absmax_args(out), block=THREADS)
    harness.free_all()


_NO_SANITIZER = build.sanitizer_missing("asan") or build.sanitizer_missing("tsan")


@pytest.mark.spawns
@pytest.mark.skipif(_NO_SANITIZER is not None, reason=f"CPU kernel harness: {_NO_SANITIZER}")
def test_every_case_is_clean_under_sanitizers():
    # ASan+UBSan and TSan at once (two children: the harness leaves cores idle at barriers);
    # a small grid (1 and 2 blocks): a sanitizer run costs 5-20x a plain one
    procs = {f: subprocess.Popen([sys.executable, str(_CHECK), "--flavour", f, "--grids", "1,2"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for f in ("asan", "tsan")}
    outs = {}
    try:
        for f, p in procs.items():
            outs[f] = p.communicate(timeout=1800)[0]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    for f, p in procs.items():
        assert p.returncode == 0, f"{f}:\n{outs[f][-8000:]}"
        n = len(cases())
        assert f"({f}, " in outs[f] and f"{n} of {n} cases match the reference" in outs[f]


@pytest.mark.spawns
@pytest.mark.skipif(_NO_SANITIZER is not None, reason=f"CPU kernel harness: {_NO_SANITIZER}")
def test_each_known_bug_fails_the_harness(tmp_path):
    res = subprocess.run([sys.executable, str(build.HARNESS_DIR / "mutations.py"),
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=2400)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-8000:]
    assert "mutations caught: 3 of 3" in out
    shuffle = (tmp_path / "shuffle-from-8.txt").read_text()
    assert "FAIL quantize-one-random" in shuffle and "chunk_absmax" in shuffle
    assert "heap-buffer-overflow" in (tmp_path / "tail-i-le-n.txt").read_text()
    assert "ThreadSanitizer: data race" in (tmp_path / "no-second-syncthreads.txt").read_text()


def test_subnormals_are_kept_as_the_gpu_build_keeps_them(harness):
    # hpcdl compiles with -ftz=false (hpcdl/kernels/nvrtc.py; tests/test_kernels_ptx.py checks
    # the PTX): a chunk of float32 subnormals keeps its absmax, gets scale 2**k > 1 and is sent
    # as non-zero float16; a flushing build would report absmax 0, scale 1 and send zeros.
    x = (np.arange(1, 65, dtype=np.float32) * np.float32(1e-40))
    assert (np.abs(x) < np.finfo(np.float32).tiny).all()
    lay = FusionLayout((x.size,), (x.dtype,), 64)
    mt = CpuMultiTensor(harness, [x], lay)
    m = harness.alloc(4)
    harness.launch("hpcdl_chunk_absmax", 1, mt.head() + absmax_args(m))
    got = harness.download(m, 1, np.float32)
    assert got[0] == x.max() and got[0] > 0
    out, scales = harness.alloc(64 * 2), harness.alloc(4)
    harness.launch("hpcdl_quantize_fp16", 1,
                   mt.head() + quantize_args(m, 1, out, scales, 0))
    assert harness.download(scales, 1, np.float32)[0] == np.float32(2.0**126)
    q = harness.download(out, 64, np.float16)
    assert (q != 0).all()
    ref_q, ref_s = ref.quantize_fp16([x], lay, ref.chunk_absmax([x], lay), 1)
    assert_same(q, ref_q, "quantize of subnormals")
    # reduce: subnormal + subnormal stays subnormal (not 0)
    a, b = harness.upload(x), harness.upload(x)
    harness.launch("hpcdl_reduce<float, 0>", 1, reduce_args(a, b, x.size))
    assert_same(harness.download(a, x.size, np.float32), x + x, "sum of subnormals")
    assert (x + x != 0).all()
    harness.free_all()
