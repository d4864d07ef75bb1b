"""End to end on a real GPU: device buffers through staging, CUDA-aware direct path,
FP16Compressor on CUDA tensors. Every test here is marked ``gpu``: skipped without
``cupy.is_available()``, a failure with ``HPCDL_REQUIRE_GPU=1``. Under mpiexec the
ranks share the machine's GPUs (``local_rank % gpu_count``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch  # a test dependency: missing, it must fail, not skip

import hpcdl

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("algorithm", hpcdl.algorithm_names())
@pytest.mark.parametrize("kind", ["cupy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("chunk_bytes", ["4096", str(4 << 20)])
def test_allreduce_of_device_buffers(ctx, rng, monkeypatch, algorithm, kind, dtype, chunk_bytes):
    monkeypatch.setenv("HPCDL_STAGING_CHUNK_BYTES", chunk_bytes)
    n = 300_001
    mine = (rng.integers(-8, 8, n) / 4).astype(dtype)
    every = np.empty(ctx.size * n, mine.dtype)
    ctx.comm.allgather(mine.copy(), every)
    if kind == "cupy":
        import cupy

        dev = cupy.asarray(mine)
        hpcdl.allreduce(dev, op="sum", algorithm=algorithm, comm=ctx.comm)
        got = cupy.asnumpy(dev)
    else:
        dev = torch.from_numpy(mine.copy()).cuda()
        hpcdl.allreduce(dev, op="sum", algorithm=algorithm, comm=ctx.comm)
        got = dev.cpu().numpy()
    np.testing.assert_array_equal(got, every.reshape(ctx.size, n).sum(0).astype(dtype))


def test_pipeline_moves_device_bytes_through_the_gpu_backend(ctx):
    """Staging pipeline round trip on a real GPU: what comes back is what was sent."""
    import cupy

    from hpcdl.buffers import as_buffer
    from hpcdl.collectives.staging import staged_pipeline
    from hpcdl.device import CupyDevice, backend_for

    src = cupy.arange(1 << 20, dtype=cupy.float32)
    out = cupy.zeros_like(src)
    ib, ob = as_buffer(src), as_buffer(out, writable=True)
    assert isinstance(backend_for(ob), CupyDevice)
    staged_pipeline(ctx.comm, ib, ob, lambda host: np.multiply(host, 2, out=host),
                    chunk_bytes=1 << 18)
    np.testing.assert_array_equal(cupy.asnumpy(out), cupy.asnumpy(src) * 2)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_fp16_compressor_on_cuda_matches_cpu_path(ctx, rng, dtype):
    from hpcdl.compression import FP16Compressor

    x = torch.from_numpy(rng.standard_normal(100_003) * 1e3).to(getattr(torch, dtype))
    if dtype == "float16":
        x = x / ctx.size
    cpu = FP16Compressor(chunk_size=1024, comm=ctx.comm, error_feedback=True)
    gpu = FP16Compressor(chunk_size=1024, comm=ctx.comm, error_feedback=True)
    for _ in range(2):
        pc, cc = cpu.compress(x, name="w")
        pg, cg = gpu.compress(x.cuda(), name="w")
        assert cg.path == "kernels" and pg.is_cuda and pg.dtype == torch.float16
        np.testing.assert_array_equal(pg.cpu().numpy().view(np.uint16), pc.numpy().view(np.uint16))
        hpcdl.allreduce(pc, comm=ctx.comm)
        hpcdl.allreduce(pg, comm=ctx.comm)
        oc, og = cpu.decompress(pc, cc), gpu.decompress(pg, cg)
        assert og.dtype == x.dtype and og.is_cuda
        assert torch.equal(og.cpu(), oc)


def test_fp16_compressor_on_cupy(ctx, rng):
    import cupy

    from hpcdl.compression import FP16Compressor

    x = rng.standard_normal(5000).astype(np.float32)
    comp = FP16Compressor(chunk_size=64, comm=ctx.comm)
    p, c = comp.compress(cupy.asarray(x))
    ref_p, ref_c = FP16Compressor(chunk_size=64, comm=ctx.comm).compress(x)
    np.testing.assert_array_equal(cupy.asnumpy(p).view(np.uint16), ref_p.view(np.uint16))
    np.testing.assert_array_equal(cupy.asnumpy(comp.decompress(p, c)),
                                  FP16Compressor(chunk_size=64).decompress(ref_p, ref_c))


def test_cuda_aware_direct_path_when_mpi_says_so(ctx, rng):
    import cupy

    if not ctx.cuda_aware:
        pytest.skip(f"MPI is not CUDA-aware here ({ctx.cuda_aware_reason})")
    x = cupy.asarray(rng.standard_normal(1 << 20))
    expect = cupy.asnumpy(x) * 0
    every = np.empty(ctx.size * x.size)
    ctx.comm.allgather(cupy.asnumpy(x), every)
    hpcdl.allreduce(x, op="sum", algorithm="native", comm=ctx.comm)
    expect = every.reshape(ctx.size, -1).sum(0)
    np.testing.assert_allclose(cupy.asnumpy(x), expect, rtol=1e-12)
