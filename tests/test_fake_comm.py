"""The in-process FakeCommunicator: ranks as threads, for algorithm unit tests.

In-process, so these are the same in every pass: they run once, serially
(``fake_ranks``).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import hpcdl
from hpcdl.comm import Communicator, FakeCommunicator, run_ranks
from hpcdl.errors import CommError
from hpcdl.ops import ReduceOp
from helpers.numpy_reference import all_inputs, close, reduce_reference

SIZES = [1, 2, 3, 4]
pytestmark = pytest.mark.fake_ranks


def test_is_a_communicator():
    comm = run_ranks(1, lambda c: c)[0]
    assert isinstance(comm, FakeCommunicator) and isinstance(comm, Communicator)
    assert (comm.rank, comm.size) == (0, 1)


@pytest.mark.parametrize("size", SIZES)
def test_point_to_point_ring(size):
    def body(c):
        right, left = (c.rank + 1) % c.size, (c.rank - 1) % c.size
        got = np.empty(3)
        c.send(np.full(3, float(c.rank)), right, tag=5)
        c.recv(got, left, tag=5)
        swapped = np.empty(2, np.int32)
        c.sendrecv(np.full(2, c.rank, np.int32), right, swapped, left, tag=6)
        reqs = [c.irecv(buf, left, tag=7) for buf in (np.empty(1), np.empty(1))]
        sends = [c.isend(np.array([c.rank * 10.0 + i]), right, tag=7) for i in range(2)]
        c.waitall(sends + reqs)
        # irecv + test(): poll until the message is there
        late = np.empty(1)
        r = c.irecv(late, left, tag=8)
        c.barrier()
        c.send(np.array([42.0]), right, tag=8)
        while not r.test():
            time.sleep(0.001)
        return got, swapped, [q.args[1][0] for q in reqs], late[0]

    for rank, (got, swapped, ordered, late) in enumerate(run_ranks(size, body)):
        left = (rank - 1) % size
        np.testing.assert_array_equal(got, np.full(3, float(left)))
        np.testing.assert_array_equal(swapped, np.full(2, left))
        assert ordered == [left * 10.0, left * 10.0 + 1]  # same (source, tag): FIFO
        assert late == 42.0


@pytest.mark.parametrize("size", SIZES)
def test_collectives(size):
    xs = all_inputs(21, size, (11,), "float64")
    ints = all_inputs(22, size, (11,), "int64", "prod")

    def body(c):
        out = {}
        for op in ReduceOp:
            b = xs[c.rank].copy()
            c.allreduce(b, op)
            out[op] = b
        p = ints[c.rank].copy()
        c.allreduce(p, ReduceOp.PROD)
        bc = xs[c.rank].copy()
        c.bcast(bc, root=size - 1)
        g = np.empty(size * 11)
        c.allgather(xs[c.rank], g)
        counts = [11 // size + (r < 11 % size) for r in range(size)]
        rs = np.empty(counts[c.rank])
        c.reduce_scatter(xs[c.rank].copy(), rs, counts, ReduceOp.MAX)
        c.barrier()
        objs = c.allgather_object({"rank": c.rank})
        root_obj = c.bcast_object(("from", c.rank), root=size - 1)
        return out, p, bc, g, rs, counts, objs, root_obj

    for rank, (out, p, bc, g, rs, counts, objs, root_obj) in enumerate(run_ranks(size, body)):
        for op in ReduceOp:
            # the fake reduces avg as a sum, like every algorithm (the API divides)
            ref = reduce_reference(xs, "sum" if op is ReduceOp.AVG else op.value)
            close(out[op], ref, xs, op.value)
        np.testing.assert_array_equal(p, reduce_reference(ints, "prod"))
        np.testing.assert_array_equal(bc, xs[-1])
        np.testing.assert_array_equal(g, np.concatenate(xs))
        start = sum(counts[:rank])
        np.testing.assert_array_equal(rs, np.max(xs, axis=0)[start:start + counts[rank]])
        assert objs == [{"rank": r} for r in range(size)]
        assert root_obj == ("from", size - 1)


@pytest.mark.parametrize("size", SIZES)
def test_split_and_named_cache(size):
    def body(c):
        sub = c.split(c.rank % 2, -c.rank, name="parity")
        again = c.split(c.rank % 2, -c.rank, name="parity")
        x = np.array([float(c.rank)])
        sub.allreduce(x, ReduceOp.SUM)
        return sub.rank, sub.size, again is sub, x[0]

    for rank, (srank, ssize, cached, total) in enumerate(run_ranks(size, body)):
        group = [r for r in range(size) if r % 2 == rank % 2]
        assert ssize == len(group) and cached
        assert srank == sorted(group, reverse=True).index(rank)  # key = -rank: reversed
        assert total == sum(group)


@pytest.mark.parametrize("size", SIZES)
def test_public_api_over_the_fake(size):
    """The collectives API takes any Communicator through comm=."""
    xs = all_inputs(23, size, (1009,), "bfloat16")

    def body(c):
        b = xs[c.rank].copy()
        hpcdl.allreduce(b, op="avg", algorithm="native", comm=c)
        g = hpcdl.allgather(xs[c.rank], comm=c)
        return b, g

    for b, g in run_ranks(size, body):
        close(b, reduce_reference(xs, "avg"), xs, "avg")
        np.testing.assert_array_equal(g, np.stack(xs))


def test_zero_size_allgather():
    def body(c):
        out = np.empty(0)
        c.allgather(np.empty(0), out)
        return out.size

    assert run_ranks(3, body) == [0, 0, 0]


def test_recv_that_never_arrives_fails_instead_of_hanging():
    def body(c):
        if c.rank == 0:
            c.recv(np.empty(4), source=1, tag=3)  # rank 1 never sends

    start = time.monotonic()
    with pytest.raises(CommError, match=r"rank 0/2\] recv: nothing arrived from rank 1 \(tag 3\)"):
        run_ranks(2, body, timeout=0.2)
    assert time.monotonic() - start < 10


def test_message_of_the_wrong_size_is_an_error():
    def body(c):
        if c.rank == 0:
            c.send(np.zeros(3), 1)
        else:
            c.recv(np.empty(4), 0)

    with pytest.raises(CommError, match="24 bytes from rank 0 does not fit a buffer of 32 bytes"):
        run_ranks(2, body, timeout=5)


def test_a_failing_rank_releases_the_others():
    """Rank 1 raises; ranks waiting in a collective get CommError, and run_ranks
    re-raises rank 1's own exception (the cause, not the echo)."""
    def body(c):
        if c.rank == 1:
            raise ValueError("rank 1 broke")
        c.barrier()

    start = time.monotonic()
    with pytest.raises(ValueError, match="rank 1 broke"):
        run_ranks(3, body, timeout=20)
    assert time.monotonic() - start < 10


def test_a_rank_that_never_arrives_times_out():
    def body(c):
        if c.rank == 0:
            c.barrier()

    with pytest.raises(CommError):
        run_ranks(2, body, timeout=0.2)


@pytest.mark.parametrize("size", [2, 5])
def test_split_undefined_color_gives_none(size):
    """MPI_UNDEFINED's role: a rank takes part in the split but joins no group."""
    from hpcdl.comm.base import UNDEFINED

    def body(c):
        inside = c.rank % 2 == 1
        sub = c.split(0 if inside else UNDEFINED, c.rank, name="odd")
        x = np.array([float(c.rank)])
        if sub is not None:
            sub.allreduce(x, ReduceOp.SUM)
        after = np.array([1.0])
        c.allreduce(after, ReduceOp.SUM)  # the parent still works for everyone
        return sub is None, None if sub is None else (sub.rank, sub.size), x[0], after[0]

    odds = [r for r in range(size) if r % 2]
    for rank, (none, shape, total, after) in enumerate(run_ranks(size, body)):
        assert none == (rank % 2 == 0) and after == size
        if not none:
            assert shape == (odds.index(rank), len(odds)) and total == sum(odds)


def test_split_rejects_a_negative_color():
    with pytest.raises(CommError, match="rank 0.*color -2"):
        run_ranks(1, lambda c: c.split(-2, 0))
