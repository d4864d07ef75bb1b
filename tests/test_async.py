"""``async_op=True`` handles, and subgroups via ``hpcdl.subgroup`` and ``comm=``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hpcdl
from helpers.fakes import FakeCudaArray, group_params, on_group
from hpcdl.collectives import registry
from hpcdl.comm import FakeCommunicator, run_ranks
from helpers.numpy_reference import Failures, all_inputs, close, reduce_reference


def test_handle_wait_returns_the_result(ctx):
    x = np.full(1009, ctx.rank + 1.0)
    h = hpcdl.allreduce(x, op="sum", async_op=True)
    assert isinstance(h, hpcdl.Handle)
    res = h.wait()
    assert res is x and h.test()
    assert h.wait() is x  # waiting again is harmless
    np.testing.assert_array_equal(x, np.full(1009, ctx.size * (ctx.size + 1) / 2))
    assert "done" in repr(h)


def test_test_polls_until_done(ctx):
    h = hpcdl.allreduce(np.ones(1 << 16, np.float32), async_op=True)
    polls = 0
    while not h.test():
        polls += 1
        assert polls < 10_000_000
    np.testing.assert_array_equal(h.wait(), np.full(1 << 16, ctx.size, np.float32))


@pytest.mark.parametrize("group", group_params((3,)))
def test_several_outstanding_every_collective(group):
    """Many operations in flight at once, waited in order (and one out of order)."""
    def body(c):
        xs = all_inputs(11, c.size, (257,), "float32")
        bufs = [xs[c.rank].copy() * (i + 1) for i in range(4)]
        handles = [hpcdl.allreduce(b, op="sum", async_op=True, comm=c) for b in bufs]
        root = c.size - 1
        bc = xs[c.rank].copy()
        hb = hpcdl.broadcast(bc, root=root, async_op=True, comm=c)
        hg = hpcdl.allgather(torch.from_numpy(xs[c.rank].copy()), async_op=True, comm=c)
        hr = hpcdl.reduce_scatter(xs[c.rank].copy(), op="max", async_op=True, comm=c)
        hbar = hpcdl.barrier(async_op=True, comm=c)
        gathered = hg.wait()  # out of order: the queue still ran in submission order
        results = [h.wait() for h in handles]
        rs = hr.wait()
        hb.wait()
        assert hbar.wait() is None
        ref = reduce_reference(xs, "sum")
        for i, r in enumerate(results):
            close(r, (ref.astype(np.float64) * (i + 1)).astype(np.float32),
                  [x * (i + 1) for x in xs], "sum")
        np.testing.assert_array_equal(bc, xs[root])
        np.testing.assert_array_equal(gathered.numpy(), np.stack(xs))
        counts = hpcdl.collectives.block_counts(257, c.size)
        start = sum(counts[:c.rank])
        np.testing.assert_array_equal(rs, np.max(xs, axis=0)[start:start + counts[c.rank]])
        if isinstance(c, FakeCommunicator):
            c.executor.close()  # fake ranks: stop the progress thread this test started

    on_group(group, body)


@pytest.mark.parametrize("group", group_params((3,)))
def test_mixing_async_and_blocking(group):
    """A blocking call waits for queued async ones, so all ranks keep the same order."""
    def body(c):
        f = Failures()
        a = np.full(100, float(c.rank))
        b = np.full(100, 1.0)
        e = np.full(100, 2.0)
        ha = hpcdl.allreduce(a, async_op=True, comm=c)
        hpcdl.allreduce(b, comm=c)  # blocking, while a may still be queued
        he = hpcdl.allreduce(e, op="max", async_op=True, comm=c)
        d = hpcdl.broadcast(np.full(3, float(c.rank)), root=0, comm=c)
        f.check("blocking", lambda: np.testing.assert_array_equal(b, np.full(100, c.size)))
        f.expect("async done before the next blocking call returned", ha.test())
        ha.wait()
        he.wait()
        f.check("async a", lambda: np.testing.assert_array_equal(a, np.full(100, sum(range(c.size)))))
        f.check("async c", lambda: np.testing.assert_array_equal(e, np.full(100, 2.0)))
        f.check("broadcast", lambda: np.testing.assert_array_equal(d, np.zeros(3)))
        f.assert_none()
        if isinstance(c, FakeCommunicator):
            c.executor.close()  # fake ranks: stop the progress thread this test started

    on_group(group, body)


def test_async_on_fake_cuda_arrays(ctx):
    h = np.full(50, 1.5, np.float32)
    o = np.zeros((ctx.size, 50), np.float32)
    h1 = hpcdl.allreduce(FakeCudaArray(h), op="avg", async_op=True)
    h2 = hpcdl.allgather(FakeCudaArray(h), out=FakeCudaArray(o), async_op=True)
    h1.wait()
    h2.wait()
    np.testing.assert_array_equal(h, np.full(50, 1.5, np.float32))
    np.testing.assert_array_equal(o, np.full((ctx.size, 50), 1.5, np.float32))


def test_local_errors_raise_at_the_call_not_at_wait(ctx):
    with pytest.raises(hpcdl.DtypeError):
        hpcdl.allreduce(np.zeros(3, np.complex64), async_op=True)
    with pytest.raises(hpcdl.InvalidArgumentError):
        hpcdl.broadcast(np.zeros(3), root=ctx.size, async_op=True)


@pytest.mark.fake_ranks
def test_error_inside_an_async_op_surfaces_at_wait(monkeypatch):
    """An algorithm that fails on the progress thread: wait() raises it, test() is True,
    and the communicator's queue keeps serving later operations."""
    def broken(comm, buf, op):
        raise hpcdl.CommError("link down on purpose", rank=comm.rank, size=comm.size,
                              op="allreduce")
    monkeypatch.setitem(registry.ALLREDUCE, "broken-for-test", broken)

    def body(comm):
        h = hpcdl.allreduce(np.ones(4), algorithm="broken-for-test", comm=comm, async_op=True)
        after = hpcdl.allreduce(np.ones(4), comm=comm, async_op=True)
        try:
            h.wait()
            err = None
        except hpcdl.CommError as exc:
            err = exc
        result = err, h.test(), after.wait(), hpcdl.allreduce(np.ones(2), comm=comm)
        comm.executor.close()  # stop this fake rank's progress thread
        return result

    for size in (2, 3):
        for rank, (err, done, after, blocking) in enumerate(run_ranks(size, body, timeout=20)):
            assert err is not None and f"rank {rank}/{size}" in str(err)
            assert "link down on purpose" in str(err) and done
            np.testing.assert_array_equal(after, np.full(4, size))
            np.testing.assert_array_equal(blocking, np.full(2, size))


@pytest.mark.fake_ranks
def test_a_closed_executor_is_replaced():
    """After close() (what exit does) a new async op gets a fresh progress thread."""
    def body(comm):
        first = hpcdl.allreduce(np.ones(3), comm=comm, async_op=True).wait().copy()
        old = comm.executor
        old.close()
        old.close()  # idempotent
        second = hpcdl.allreduce(np.ones(3), comm=comm, async_op=True).wait()
        replaced = comm.executor is not old and not comm.executor.closed
        comm.executor.close()
        return first, second, replaced

    for first, second, replaced in run_ranks(2, body, timeout=20):
        assert replaced
        np.testing.assert_array_equal(first, np.full(3, 2.0))
        np.testing.assert_array_equal(second, np.full(3, 2.0))


def test_wait_timeout_names_the_operation():
    h = hpcdl.Handle("allreduce")
    with pytest.raises(TimeoutError, match="allreduce"):
        h.wait(timeout=0.01)
    assert not h.test() and "pending" in repr(h)


# --- subgroups -----------------------------------------------------------------

@pytest.mark.parametrize("group", group_params((3, 4)))
def test_subgroups(group):
    def body(c):
        f = Failures()
        evens = list(range(0, c.size, 2))
        odds = list(range(1, c.size, 2))
        backwards = list(reversed(range(c.size)))
        ge = hpcdl.subgroup(evens, comm=c)
        go = hpcdl.subgroup(odds, comm=c)
        gb = hpcdl.subgroup(backwards, comm=c)
        again = hpcdl.subgroup(evens, comm=c)
        f.expect("cached", again is ge)
        mine = ge if c.rank % 2 == 0 else go
        f.expect("membership", (ge is None) == (c.rank % 2 == 1) and (go is None) == (c.rank % 2 == 0))
        group = evens if c.rank % 2 == 0 else odds
        f.expect("rank in subgroup", mine.rank == group.index(c.rank) and mine.size == len(group))
        f.expect("backwards rank", gb.rank == c.size - 1 - c.rank)

        x = np.full(7, float(c.rank))
        hpcdl.allreduce(x, comm=mine)
        f.check("allreduce over my parity", lambda: np.testing.assert_array_equal(x, np.full(7, sum(group))))
        b = np.full(3, float(c.rank))
        hpcdl.broadcast(b, root=0, comm=gb)  # root 0 of the backwards group is the last rank
        f.check("broadcast root 0 = world's last", lambda: np.testing.assert_array_equal(b, np.full(3, c.size - 1.0)))
        g = hpcdl.allgather(np.array([c.rank], np.int64), comm=gb)
        f.check("allgather order follows the group", lambda: np.testing.assert_array_equal(g.reshape(-1), backwards))
        h = hpcdl.allreduce(np.ones(5, np.float32), op="avg", comm=mine, async_op=True)
        rs = hpcdl.reduce_scatter(np.arange(10, dtype=np.float64), comm=gb)
        f.check("async on a subgroup", lambda: np.testing.assert_array_equal(h.wait(), np.ones(5)))
        counts = hpcdl.collectives.block_counts(10, c.size)
        start = sum(counts[:gb.rank])
        f.check("reduce_scatter on a subgroup", lambda: np.testing.assert_array_equal(
            rs, c.size * np.arange(10.0)[start:start + counts[gb.rank]]))
        hpcdl.barrier(comm=mine)
        if isinstance(c, FakeCommunicator) and mine.executor is not None:
            mine.executor.close()  # fake ranks: stop the progress thread this test started
        f.assert_none()

    on_group(group, body)


def test_subgroup_of_one_rank(ctx):
    solo = hpcdl.subgroup([ctx.size - 1])
    if ctx.rank == ctx.size - 1:
        x = np.arange(4.0)
        hpcdl.allreduce(x, comm=solo, op="prod")
        np.testing.assert_array_equal(x, np.arange(4.0))
        assert solo.size == 1
    else:
        assert solo is None


def test_bad_subgroup(ctx):
    for ranks in ([0, 0], [ctx.size], [-1]):
        with pytest.raises(hpcdl.InvalidArgumentError, match=f"rank {ctx.rank}.*distinct ranks"):
            hpcdl.subgroup(ranks)


def test_close_gives_up_on_a_stuck_operation(capfd):
    """Exit must not hang on an operation that never finishes (a peer that never joined):
    close() returns after its timeout and says what it left running."""
    import threading

    from hpcdl.collectives.handle import Executor

    release = threading.Event()
    ex = Executor("hpcdl-test-stuck")
    handle = ex.submit("allreduce", lambda: release.wait(30))
    closer = threading.Thread(target=ex.close, kwargs={"timeout": 0.5}, daemon=True)
    try:
        closer.start()
        closer.join(5)
        returned = not closer.is_alive()
    finally:
        release.set()  # let the stuck operation (and an old close()) finish
        handle.wait(10)
        closer.join(10)
    assert returned, "Executor.close() waited for a stuck operation past its timeout"
    assert "still running" in capfd.readouterr().err


def test_executor_pending_counts_unfinished_operations():
    """``pending`` (what the blocking fast path checks before bypassing the queue) counts
    submitted operations until each has finished, failed ones included."""
    import threading

    from hpcdl.collectives.handle import Executor

    release = threading.Event()
    ex = Executor("hpcdl-test-pending")
    try:
        assert ex.pending == 0
        first = ex.submit("allreduce", lambda: release.wait(30))
        second = ex.submit("broadcast", lambda: 1 / 0)
        assert ex.pending == 2
        release.set()
        assert first.wait(10) is True
        with pytest.raises(ZeroDivisionError):
            second.wait(10)
        assert ex.drain(10) and ex.pending == 0
    finally:
        release.set()
        ex.close(timeout=5)


@pytest.mark.fake_ranks
@pytest.mark.parametrize("make", ["subgroup", "partial_allreduce"])
def test_split_waits_for_queued_async_work(make):
    """A new subcommunicator is a collective on the parent: it must start after the
    async operations already queued there, as on every other rank (MPI's ordering rule)."""
    import time

    from hpcdl.collectives.handle import executor_for

    def body(comm):
        slow = executor_for(comm).submit("allreduce", lambda: time.sleep(0.3))
        if make == "subgroup":
            hpcdl.subgroup([1, 0], comm=comm)
        else:
            hpcdl.partial_allreduce(np.ones(4), group_size=2, step=0, comm=comm)
        finished_first = slow.test()
        comm.executor.close()
        return finished_first

    assert run_ranks(2, body, timeout=20) == [True, True]


def test_async_needs_mpi_thread_support(ctx, monkeypatch):
    """Without MPI_THREAD_SERIALIZED a progress thread may not call MPI: a clear error."""
    from mpi4py import MPI

    from hpcdl.collectives.handle import executor_for
    from hpcdl.comm.mpi import MPICommunicator
    from hpcdl.errors import CommError

    fresh = MPICommunicator(MPI.COMM_SELF)
    monkeypatch.setattr(MPI, "Query_thread", lambda: MPI.THREAD_FUNNELED)
    with pytest.raises(CommError, match="MPI_THREAD_FUNNELED"):
        executor_for(fresh)
    assert fresh.executor is None
