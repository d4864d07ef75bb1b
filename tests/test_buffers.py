"""The buffer adapter, and the collectives on torch CPU tensors and fake CUDA arrays.

``FakeCudaArray`` (conftest.py) exposes ``__cuda_array_interface__`` over host
memory; without a GPU hpcdl treats such pointers as device memory it reaches
by host copies, so the staging path (and, with ``cuda_aware`` forced on, the
direct device-pointer path) runs here on a CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hpcdl
from helpers.fakes import FakeCudaArray, group_params, on_group
from hpcdl.buffers import as_buffer, host_view
from hpcdl.collectives import block_counts
from hpcdl.ops import SUPPORTED_DTYPES, bfloat16
from helpers.numpy_reference import Failures, all_inputs, close, ops_for, reduce_reference

DTYPES = list(SUPPORTED_DTYPES)
# bfloat16 has no __cuda_array_interface__ typestr (numpy calls it '<V2'), so no
# CAI producer can hand one over; torch CUDA bfloat16 goes through data_ptr().
CAI_DTYPES = [d for d in DTYPES if d != "bfloat16"]
_TORCH = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16, "int32": torch.int32, "int64": torch.int64}


def to_torch(x: np.ndarray) -> torch.Tensor:
    """A torch CPU tensor holding a copy of ``x`` (bfloat16 through its bits)."""
    if x.dtype == bfloat16:
        return torch.from_numpy(x.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(x.copy())


def to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(bfloat16).copy()
    return t.numpy().copy()


# --- the adapter ---------------------------------------------------------------

shapes_st = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)


@settings(max_examples=40, deadline=None, database=None)
@given(shape=shapes_st, dtype=st.sampled_from(DTYPES))
def test_numpy_buffer_is_a_zero_copy_view(shape, dtype):
    a = np.zeros(shape, SUPPORTED_DTYPES[dtype])
    b = as_buffer(a, writable=True)
    assert (b.kind, b.dtype, b.shape, b.device, b.size) == ("numpy", a.dtype, shape, None, a.size)
    assert b.nbytes == a.nbytes and b.host.shape == (a.size,) and not b.is_device
    if a.size:
        assert b.ptr == a.ctypes.data
        b.host[-1] = 3
        assert a.reshape(-1)[-1] == 3


@settings(max_examples=40, deadline=None, database=None)
@given(shape=shapes_st, dtype=st.sampled_from(DTYPES), grad=st.booleans())
def test_torch_buffer_is_a_zero_copy_view(shape, dtype, grad):
    t = torch.zeros(shape, dtype=_TORCH[dtype])
    if grad and t.is_floating_point():
        t.requires_grad_(True)
    b = as_buffer(t, writable=True)
    assert (b.kind, b.dtype, b.shape, b.device) == ("torch", SUPPORTED_DTYPES[dtype], shape, None)
    assert b.host.dtype == SUPPORTED_DTYPES[dtype] and b.host.size == t.numel()
    if t.numel():
        assert b.ptr == t.data_ptr() == b.host.ctypes.data
        b.host[0] = 2
        assert t.detach().reshape(-1)[0].item() == 2


@settings(max_examples=30, deadline=None, database=None)
@given(shape=shapes_st.filter(lambda s: int(np.prod(s)) > 0), dtype=st.sampled_from(CAI_DTYPES))
def test_cuda_array_interface_buffer(shape, dtype):
    host = np.arange(int(np.prod(shape))).astype(SUPPORTED_DTYPES[dtype]).reshape(shape)
    b = as_buffer(FakeCudaArray(host), writable=True)
    assert (b.kind, b.dtype, b.shape, b.device, b.host) == ("cuda_array_interface", host.dtype,
                                                            shape, 0, None)
    assert b.ptr == host.ctypes.data and b.stream == 1 and b.sync is not None and b.is_device
    np.testing.assert_array_equal(host_view(b.ptr, b.nbytes, b.dtype), host.reshape(-1))


def test_explicit_c_strides_are_contiguous():
    host = np.zeros((4, 3), np.float32)
    b = as_buffer(FakeCudaArray(host, strides=(12, 4)))
    assert b.shape == (4, 3)
    # a dimension of extent 1 may carry any stride
    as_buffer(FakeCudaArray(np.zeros((1, 3), np.float32), strides=(999, 4)))


def test_bfloat16_cuda_array_interface_is_refused_clearly():
    with pytest.raises(hpcdl.DtypeError, match="V2|void"):
        as_buffer(FakeCudaArray(np.zeros(3, bfloat16)), rank=0, op="allreduce")


def test_zero_size_buffers(ctx):
    """Zero elements: every collective returns at once, on every buffer kind."""
    f = Failures()
    for kind, make in (("numpy", lambda n=0: np.zeros(n, np.float32)),
                       ("torch", lambda n=0: torch.zeros(n)),
                       ("fake-cuda", lambda n=0: FakeCudaArray(np.zeros(n, np.float32)))):
        x = make()
        f.expect(f"{kind} allreduce", hpcdl.allreduce(x) is x)
        f.expect(f"{kind} broadcast", hpcdl.broadcast(x, root=ctx.size - 1) is x)
        out = make()
        f.expect(f"{kind} allreduce out", hpcdl.allreduce(x, out=out, op="avg") is out)
        # fake CUDA arrays cannot be allocated by hpcdl: pass out=
        fake = kind == "fake-cuda"
        g = hpcdl.allgather(x, out=make() if fake else None)
        f.expect(f"{kind} allgather", tuple(g.shape) == ((0,) if fake else (ctx.size, 0)), str(g.shape))
        rs = hpcdl.reduce_scatter(x, out=make() if fake else None)
        f.expect(f"{kind} reduce_scatter", tuple(rs.shape) == (0,), str(rs.shape))
    f.assert_none()


# --- torch CPU tensors -----------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", group_params((3,)))
def test_torch_collectives(group, dtype):
    def body(c):
        f = Failures()
        shape = (5, 3) if c.size < 3 else (c.size - 1,)
        for i, op in enumerate(ops_for(dtype)):
            for shp in ((1009,), shape):
                xs = all_inputs(500 + i, c.size, shp, dtype, op)
                ref = reduce_reference(xs, op)
                t = to_torch(xs[c.rank])
                res = hpcdl.allreduce(t, op=op, algorithm="native", comm=c)
                f.expect(f"{op} returns the tensor", res is t)
                f.check(f"{op}{shp} in place", lambda: close(to_numpy(t), ref, xs, op))
                out = torch.empty(shp, dtype=_TORCH[dtype])
                hpcdl.allreduce(to_torch(xs[c.rank]), out=out, op=op, algorithm="native", comm=c)
                f.check(f"{op}{shp} out", lambda: close(to_numpy(out), ref, xs, op))
        xs = all_inputs(600, c.size, (1009,), dtype)
        t = to_torch(xs[c.rank])
        hpcdl.broadcast(t, root=c.size - 1, comm=c)
        f.check("broadcast", lambda: np.testing.assert_array_equal(to_numpy(t), xs[-1]))
        g = hpcdl.allgather(to_torch(xs[c.rank]), comm=c)
        f.expect("allgather allocates a tensor", isinstance(g, torch.Tensor) and g.dtype == _TORCH[dtype]
                 and tuple(g.shape) == (c.size, 1009), repr(type(g)))
        f.check("allgather", lambda: np.testing.assert_array_equal(to_numpy(g), np.stack(xs)))
        counts = block_counts(1009, c.size)
        start = sum(counts[:c.rank])
        sl = slice(start, start + counts[c.rank])
        rs = hpcdl.reduce_scatter(to_torch(xs[c.rank]), op="sum", comm=c)
        f.expect("reduce_scatter allocates a tensor", isinstance(rs, torch.Tensor))
        f.check("reduce_scatter", lambda: close(to_numpy(rs), reduce_reference([x[sl] for x in xs], "sum"),
                                                [x[sl] for x in xs], "sum"))
        f.assert_none()

    on_group(group, body)


def test_torch_requires_grad_tensors(ctx):
    """Gradients and parameters are leaf tensors with requires_grad: reduced in place."""
    xs = all_inputs(700, ctx.size, (4, 6), "float32")
    w = to_torch(xs[ctx.rank]).requires_grad_(True)
    hpcdl.allreduce(w, op="avg", algorithm="native")
    p = to_torch(xs[ctx.rank]).requires_grad_(True)
    hpcdl.broadcast(p, root=0)
    g = hpcdl.allgather(to_torch(xs[ctx.rank]).requires_grad_(True))
    assert w.requires_grad and w.is_leaf
    close(to_numpy(w), reduce_reference(xs, "avg"), xs, "avg")
    np.testing.assert_array_equal(to_numpy(p), xs[0])
    np.testing.assert_array_equal(to_numpy(g), np.stack(xs))
    # autograd still works on the reduced tensor
    (w * 2).sum().backward()
    assert torch.equal(w.grad, torch.full_like(w, 2))


# --- fake CUDA arrays: the device path on a CPU ----------------------------------

def _fake_device_round(ctx, comm, dtype: str, seed: int) -> Failures:
    """allreduce (in/out of place, every op), broadcast, allgather, reduce_scatter on
    FakeCudaArray buffers over ``comm``; returns the failures."""
    f = Failures()
    size, rank = comm.size, comm.rank
    for shp in ((1009,), (max(size - 1, 1),)):
        for i, op in enumerate(ops_for(dtype)):
            xs = all_inputs(seed + i, size, shp, dtype, op)
            ref = reduce_reference(xs, op)
            h = xs[rank].copy()
            res = hpcdl.allreduce(FakeCudaArray(h), op=op, algorithm="native", comm=comm)
            f.expect(f"{op} returns the fake array", isinstance(res, FakeCudaArray))
            f.check(f"{op}{shp} in place", lambda: close(h, ref, xs, op))
            o = np.zeros_like(h)
            hpcdl.allreduce(FakeCudaArray(xs[rank].copy()), out=FakeCudaArray(o), op=op,
                            algorithm="native", comm=comm)
            f.check(f"{op}{shp} out", lambda: close(o, ref, xs, op))
        xs = all_inputs(seed + 50, size, shp, dtype)
        b = xs[rank].copy() if rank == size - 1 else np.zeros(shp, xs[0].dtype)
        hpcdl.broadcast(FakeCudaArray(b), root=size - 1, comm=comm)
        f.check(f"broadcast{shp}", lambda: np.testing.assert_array_equal(b, xs[-1]))
        g = np.zeros((size, *shp), xs[0].dtype)
        hpcdl.allgather(FakeCudaArray(xs[rank].copy()), out=FakeCudaArray(g), comm=comm)
        f.check(f"allgather{shp}", lambda: np.testing.assert_array_equal(g, np.stack(xs)))
        counts = block_counts(int(np.prod(shp)), size)
        start = sum(counts[:rank])
        sl = slice(start, start + counts[rank])
        for op in ("sum", "min"):
            r = np.zeros(counts[rank], xs[0].dtype)
            hpcdl.reduce_scatter(FakeCudaArray(xs[rank].copy()), out=FakeCudaArray(r), op=op, comm=comm)
            part = [x[sl] for x in xs]
            f.check(f"reduce_scatter {op}{shp}", lambda: close(r, reduce_reference(part, op), part, op))
    return f


@pytest.mark.parametrize("group", group_params((3,)))
@pytest.mark.parametrize("dtype", CAI_DTYPES)
def test_fake_cuda_arrays_through_host_staging(group, dtype):
    def body(comm):
        assert not getattr(comm, "cuda_aware", False)  # Open MPI here: the staging path
        _fake_device_round(None, comm, dtype, 800).assert_none()

    on_group(group, body)


@pytest.fixture
def cuda_aware_comm(ctx):
    """A communicator that believes MPI is CUDA-aware. With no GPU the "device"
    pointers are host memory, so MPI can really be handed them: this runs the
    direct (no staging) path end to end."""
    comm = ctx.comm.split(0, ctx.rank, name="tests:cuda-aware")
    comm.cuda_aware = True
    return comm


@pytest.mark.parametrize("dtype", ["float32", "float16", "int64"])
def test_fake_cuda_arrays_direct_path(cuda_aware_comm, ctx, dtype):
    _fake_device_round(ctx, cuda_aware_comm, dtype, 900).assert_none()


@pytest.mark.mpi_pass
def test_fake_cuda_large_message(ctx):
    """9 MiB + a few elements: more than one staging chunk (4 MiB by default)."""
    count = (9 << 20) // 4 + 13
    xs = all_inputs(950, ctx.size, (count,), "float32")
    f = Failures()
    h = xs[ctx.rank].copy()
    hpcdl.allreduce(FakeCudaArray(h), algorithm="native")
    f.check("allreduce", lambda: close(h, reduce_reference(xs, "sum"), xs, "sum"))
    o = np.zeros_like(h)
    hpcdl.allreduce(FakeCudaArray(xs[ctx.rank]), out=FakeCudaArray(o), op="max")
    f.check("allreduce out", lambda: np.testing.assert_array_equal(o, np.max(xs, axis=0)))
    b = xs[ctx.rank].copy()
    hpcdl.broadcast(FakeCudaArray(b), root=0)
    f.check("broadcast", lambda: np.testing.assert_array_equal(b, xs[0]))
    counts = block_counts(count, ctx.size)
    start = sum(counts[:ctx.rank])
    r = np.zeros(counts[ctx.rank], np.float32)
    hpcdl.reduce_scatter(FakeCudaArray(xs[ctx.rank]), out=FakeCudaArray(r), op="min")
    f.check("reduce_scatter", lambda: np.testing.assert_array_equal(
        r, np.min(xs, axis=0)[start:start + counts[ctx.rank]]))
    f.assert_none()


def test_torch_views_and_mixed_kinds(ctx):
    """A view with a storage offset reduces only its own elements; a torch input may
    write into a NumPy output (both host memory)."""
    base = torch.zeros(10, dtype=torch.float64)
    view = base[3:8]
    view.fill_(ctx.rank + 1.0)
    hpcdl.allreduce(view)
    out = np.zeros(5)
    hpcdl.allreduce(torch.full((5,), 2.0, dtype=torch.float64), out=out)
    g = hpcdl.allgather(torch.arange(3, dtype=torch.int32) + ctx.rank,
                        out=np.zeros(3 * ctx.size, np.int32))
    total = ctx.size * (ctx.size + 1) / 2
    np.testing.assert_array_equal(base.numpy(), [0, 0, 0] + [total] * 5 + [0, 0])
    np.testing.assert_array_equal(out, np.full(5, 2.0 * ctx.size))
    np.testing.assert_array_equal(g, np.concatenate([np.arange(3) + r for r in range(ctx.size)]))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int64"])
def test_mpi_reads_device_buffers_through_their_own_interface(dtype):
    """The CUDA-aware path hands mpi4py the caller's object (DLPack for torch, the CUDA
    array interface otherwise), not a wrapper: a torch tensor that requires grad (torch
    refuses to export it) and bfloat16 (no CAI typestr) must still go through. Over
    COMM_SELF with memory that is really on the host, MPI moves real bytes."""
    from mpi4py import MPI

    from hpcdl.buffers import Buffer
    from hpcdl.comm.mpi import MPICommunicator
    from hpcdl.ops import ReduceOp

    comm = MPICommunicator(MPI.COMM_SELF)
    t = torch.arange(1, 8, dtype=_TORCH[dtype]).requires_grad_(dtype != "int64")
    dt = SUPPORTED_DTYPES[dtype]
    # described as device memory, as as_buffer does for a CUDA tensor
    dev = Buffer(t, "torch", dt, tuple(t.shape), 0, None, t.data_ptr())
    comm.bcast(dev, 0)
    got = np.zeros(7 * 1, dt)
    comm.allgather(dev, got)
    np.testing.assert_array_equal(got.astype(np.float64), np.arange(1, 8))
    if dtype != "bfloat16":  # MPI reduces it only after an upcast (hpcdl.ops.mpi_reducible)
        comm.allreduce(dev, ReduceOp.SUM)
        host = np.arange(1, 8).astype(dt)
        cai = as_buffer(FakeCudaArray(host), writable=True)
        assert cai.is_device
        comm.allreduce(cai, ReduceOp.MAX)
        comm.bcast(cai, 0)
        np.testing.assert_array_equal(host, np.arange(1, 8))
