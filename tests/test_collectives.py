"""Every collective against a NumPy reference, on every dtype and op, on NumPy buffers.

The per-dtype tests run on the job's communicator under mpiexec (1..4 ranks)
and, in the serial pass, on in-process fake communicators of 3 and 4 ranks
(one rank would make every collective a no-op): each rank rebuilds all
ranks' inputs from seeds (tests/helpers/numpy_reference.py) and checks its own
result. Shapes cover 0 elements, 1, fewer elements than ranks, a prime count
(1009, so blocks never divide evenly) and a 2-D array; one multi-MiB case per
dtype runs in ``test_large_message``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import hpcdl
from helpers.fakes import FakeCudaArray, group_params, on_group
from hpcdl.collectives import block_counts
from helpers.numpy_reference import (Failures, OPS, all_inputs, close, ops_for, rank_input,
                             reduce_reference)

DTYPES = ["float64", "float32", "float16", "bfloat16", "int32", "int64"]


def shapes(size: int) -> list[tuple[int, ...]]:
    """0, 1, fewer elements than ranks (when there is such a count > 1), a prime, 2-D."""
    out = [(0,), (1,), (1009,), (7, 3)]
    if size > 2:
        out.insert(2, (size - 1,))
    return out


@pytest.mark.parametrize("group", group_params())
@pytest.mark.parametrize("dtype", DTYPES)
def test_allreduce(group, dtype):
    def body(c):
        f = Failures()
        ops = ops_for(dtype)
        for si, shape in enumerate(shapes(c.size)):
            for oi, op in enumerate(ops):
                seed = 1000 * si + oi
                xs = all_inputs(seed, c.size, shape, dtype, op)
                ref = reduce_reference(xs, op)
                # in place
                buf = xs[c.rank].copy()
                res = hpcdl.allreduce(buf, op=op, algorithm="native", comm=c)
                f.expect(f"{op}{shape} in-place returns its tensor", res is buf)
                f.check(f"{op}{shape} in-place", lambda: close(buf, ref, xs, op))
                # out of place: the input stays untouched
                inp = xs[c.rank].copy()
                out = np.full(shape, 7, inp.dtype)
                res = hpcdl.allreduce(inp, out=out, op=op, algorithm="native", comm=c)
                f.expect(f"{op}{shape} out-of-place returns out", res is out)
                f.check(f"{op}{shape} out-of-place", lambda: close(out, ref, xs, op))
                f.check(f"{op}{shape} input kept", lambda: np.testing.assert_array_equal(inp, xs[c.rank]))
        if "avg" not in ops:  # integers: avg is refused locally, on every rank alike
            with pytest.raises(hpcdl.DtypeError, match=f"rank {c.rank}.*avg.*floating"):
                hpcdl.allreduce(rank_input(1, c.rank, (5,), dtype), op="avg", comm=c)
        f.assert_none()

    on_group(group, body)


@pytest.mark.parametrize("group", group_params())
@pytest.mark.parametrize("dtype", DTYPES)
def test_broadcast_from_every_root(group, dtype):
    def body(c):
        f = Failures()
        for si, shape in enumerate(shapes(c.size)):
            for root in range(c.size):
                sent = rank_input(50 + si, root, shape, dtype)
                buf = sent.copy() if c.rank == root else rank_input(99, c.rank, shape, dtype)
                res = hpcdl.broadcast(buf, root=root, comm=c)
                f.expect(f"root {root} {shape} returns its tensor", res is buf)
                f.check(f"root {root} {shape}", lambda: np.testing.assert_array_equal(buf, sent))
        f.assert_none()

    on_group(group, body)


@pytest.mark.parametrize("group", group_params())
@pytest.mark.parametrize("dtype", DTYPES)
def test_allgather(group, dtype):
    def body(c):
        f = Failures()
        for si, shape in enumerate(shapes(c.size)):
            xs = all_inputs(200 + si, c.size, shape, dtype)
            expect = np.stack(xs)
            got = hpcdl.allgather(xs[c.rank].copy(), comm=c)
            f.expect(f"{shape} allocated shape", got.shape == expect.shape, f"{got.shape}")
            f.check(f"{shape} allocated", lambda: np.testing.assert_array_equal(got, expect))
            flat = np.zeros(expect.size, expect.dtype)  # any shape with the right count
            res = hpcdl.allgather(xs[c.rank], out=flat, comm=c)
            f.expect(f"{shape} returns out", res is flat)
            f.check(f"{shape} into out", lambda: np.testing.assert_array_equal(flat, expect.reshape(-1)))
        f.assert_none()

    on_group(group, body)


@pytest.mark.parametrize("group", group_params())
@pytest.mark.parametrize("dtype", DTYPES)
def test_reduce_scatter_uneven_blocks(group, dtype):
    def body(c):
        f = Failures()
        for si, shape in enumerate(shapes(c.size)):
            count = int(np.prod(shape))
            counts = block_counts(count, c.size)
            start = sum(counts[:c.rank])
            for oi, op in enumerate(ops_for(dtype)):
                xs = all_inputs(300 + 10 * si + oi, c.size, shape, dtype, op)
                ref = reduce_reference(xs, op).reshape(-1)[start:start + counts[c.rank]]
                mine = [x.reshape(-1)[start:start + counts[c.rank]] for x in xs]
                got = hpcdl.reduce_scatter(xs[c.rank].copy(), op=op, comm=c)
                f.expect(f"{op}{shape} block shape", got.shape == (counts[c.rank],), f"{got.shape}")
                f.check(f"{op}{shape} allocated", lambda: close(got, ref, mine, op))
                out = np.empty(counts[c.rank], xs[0].dtype)
                res = hpcdl.reduce_scatter(xs[c.rank], out=out, op=op, comm=c)
                f.expect(f"{op}{shape} returns out", res is out)
                f.check(f"{op}{shape} into out", lambda: close(out, ref, mine, op))
        if "avg" not in ops_for(dtype):
            with pytest.raises(hpcdl.DtypeError, match=f"rank {c.rank}.*avg"):
                hpcdl.reduce_scatter(rank_input(1, c.rank, (5,), dtype), op="avg", comm=c)
        f.assert_none()

    on_group(group, body)


def test_block_counts_like_array_split():
    for count in (0, 1, 3, 7, 1009):
        for size in (1, 2, 3, 4, 5):
            expect = [len(b) for b in np.array_split(np.arange(count), size)]
            assert block_counts(count, size) == expect


@pytest.mark.mpi_pass
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_message(ctx, dtype):
    """One multi-MiB case per dtype and collective (3 MiB per rank, an odd count)."""
    itemsize = np.dtype(rank_input(0, 0, (1,), dtype).dtype).itemsize
    count = (3 << 20) // itemsize + 7
    xs = all_inputs(400, ctx.size, (count,), dtype)
    f = Failures()

    buf = xs[ctx.rank].copy()
    hpcdl.allreduce(buf, op="sum", algorithm="native")
    f.check("allreduce", lambda: close(buf, reduce_reference(xs, "sum"), xs, "sum"))

    root = ctx.size - 1
    b = xs[ctx.rank].copy()
    hpcdl.broadcast(b, root=root)
    f.check("broadcast", lambda: np.testing.assert_array_equal(b, xs[root]))

    g = hpcdl.allgather(xs[ctx.rank])
    f.check("allgather", lambda: np.testing.assert_array_equal(g, np.stack(xs)))

    counts = block_counts(count, ctx.size)
    start = sum(counts[:ctx.rank])
    sl = slice(start, start + counts[ctx.rank])
    rs = hpcdl.reduce_scatter(xs[ctx.rank], op="max")
    f.check("reduce_scatter", lambda: close(rs, reduce_reference([x[sl] for x in xs], "max"),
                                            [x[sl] for x in xs], "max"))
    f.assert_none()


@pytest.mark.mpi_pass
def test_barrier_waits_for_the_last_rank(ctx):
    # Rank r arrives r * 30 ms late; nobody may leave before the last one arrived.
    time.sleep(0.03 * ctx.rank)
    arrived = time.time()
    hpcdl.barrier()
    left = time.time()
    times = ctx.comm.allgather_object((arrived, left))
    assert min(t[1] for t in times) >= max(t[0] for t in times)
    assert hpcdl.barrier(async_op=True).wait() is None


def test_ops_accept_enum_and_any_case(ctx):
    buf = np.full(4, ctx.rank + 1, np.int64)
    hpcdl.allreduce(buf, op=hpcdl.ReduceOp.MAX)
    buf2 = np.full(4, ctx.rank + 1, np.int64)
    hpcdl.allreduce(buf2, op="SUM")
    np.testing.assert_array_equal(buf, np.full(4, ctx.size))
    np.testing.assert_array_equal(buf2, np.full(4, ctx.size * (ctx.size + 1) // 2))


def test_auto_algorithm_matches_native(ctx):
    xs = all_inputs(7, ctx.size, (1009,), "float64")
    a = xs[ctx.rank].copy()
    hpcdl.allreduce(a)  # algorithm="auto"
    close(a, reduce_reference(xs, "sum"), xs, "sum")
    assert "native" in hpcdl.algorithm_names() and "auto" in hpcdl.algorithm_names()
    assert OPS == tuple(o.value for o in hpcdl.ReduceOp)


@pytest.mark.parametrize("group", group_params((3,)))
def test_float16_avg_does_not_overflow(group):
    """The mean of values near float16's maximum is representable even when their
    sum is not: the native path divides in float32 before rounding back.
    (bfloat16 has float32's exponent range, so its float32 sum cannot overflow first.)"""
    big = np.float16(60000.0)

    def body(c):
        a = np.full(9, big)
        hpcdl.allreduce(a, op="avg", algorithm="native", comm=c)
        b = hpcdl.allreduce(np.full(9, big), out=np.empty(9, np.float16), op="avg",
                            algorithm="native", comm=c)
        d = FakeCudaArray(np.full(9, big))
        hpcdl.allreduce(d, op="avg", algorithm="native", comm=c)
        rs = hpcdl.reduce_scatter(np.full(9, big), op="avg", comm=c)
        for got in (a, b, d.host, rs):
            np.testing.assert_array_equal(got, np.full(got.size, big))

    on_group(group, body)
