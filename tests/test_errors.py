"""Local argument checks, and the ``HPCDL_DEBUG=1`` cross-rank check.

Local checks raise before any communication, identically on every rank, so
they are safe at any size. Every message must name the rank and the cause.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hpcdl
from helpers.fakes import FakeCudaArray
from hpcdl.errors import HpcdlError


def raises(ctx, exc_type, cause: str, fn, op: str | None = None) -> HpcdlError:
    """``fn()`` raises ``exc_type`` whose message names this rank and ``cause``."""
    with pytest.raises(exc_type) as info:
        fn()
    err = info.value
    msg = str(err)
    assert f"rank {ctx.rank}" in msg, msg
    assert cause in msg, msg
    assert err.rank == ctx.rank
    if op is not None:
        assert err.op == op and f"{op}:" in msg, msg
    return err


def test_error_family():
    e = hpcdl.InvalidArgumentError("bad", rank=2, size=4, op="allreduce")
    assert str(e) == "[hpcdl rank 2/4] allreduce: bad"
    assert isinstance(e, ValueError) and isinstance(e, hpcdl.HpcdlError)
    assert isinstance(hpcdl.DtypeError("x"), TypeError)
    assert str(hpcdl.CommError("x", op="recv")) == "[hpcdl] recv: x"
    for cls in (hpcdl.ContiguityError, hpcdl.DeviceMismatchError, hpcdl.MismatchError,
                hpcdl.CommError):
        assert issubclass(cls, hpcdl.HpcdlError)


def test_errors_survive_pickling(ctx):
    """Errors cross processes intact (gathered from other ranks, multiprocessing)."""
    import pickle

    e = hpcdl.DeviceMismatchError("input on host, output on cuda:0", rank=ctx.rank,
                                  size=ctx.size, op="allgather")
    gathered = ctx.comm.allgather_object(e)
    again = pickle.loads(pickle.dumps(e))
    for f in (again, gathered[ctx.rank]):
        assert type(f) is hpcdl.DeviceMismatchError and str(f) == str(e)
        assert (f.rank, f.size, f.op, f.reason) == (e.rank, e.size, e.op, e.reason)
    assert [g.rank for g in gathered] == list(range(ctx.size))


@pytest.mark.parametrize("make, cause", [
    (lambda: np.zeros(4, np.complex64), "complex64"),
    (lambda: np.zeros(4, np.uint8), "uint8"),
    (lambda: np.zeros(4, ">f4"), "byte order"),
    (lambda: torch.zeros(4, dtype=torch.complex64), "torch.complex64"),
    (lambda: torch.zeros(4, dtype=torch.uint8), "torch.uint8"),
    (lambda: [1.0, 2.0], "list"),
], ids=["complex64", "uint8", "big-endian", "torch-complex64", "torch-uint8", "list"])
def test_unsupported_dtype(ctx, make, cause):
    raises(ctx, hpcdl.DtypeError, cause, lambda: hpcdl.allreduce(make()), "allreduce")
    raises(ctx, hpcdl.DtypeError, cause, lambda: hpcdl.broadcast(make()), "broadcast")
    raises(ctx, hpcdl.DtypeError, cause, lambda: hpcdl.allgather(make()), "allgather")
    raises(ctx, hpcdl.DtypeError, cause, lambda: hpcdl.reduce_scatter(make()), "reduce_scatter")


def test_avg_on_integers(ctx):
    for dt in (np.int32, np.int64):
        raises(ctx, hpcdl.DtypeError, "needs a floating dtype",
               lambda: hpcdl.allreduce(np.ones(3, dt), op="avg"), "allreduce")
        raises(ctx, hpcdl.DtypeError, "needs a floating dtype",
               lambda: hpcdl.reduce_scatter(np.ones(3, dt), op="avg"), "reduce_scatter")


@pytest.mark.parametrize("make, arg", [
    (lambda: np.zeros(10, np.float32)[::2], "numpy"),
    (lambda: np.zeros((3, 4), np.float64).T, "numpy-T"),
    (lambda: torch.zeros(3, 4).t(), "torch"),
    (lambda: FakeCudaArray(np.zeros((4, 3), np.float32), strides=(4, 16)), "fake-cuda"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_non_contiguous(ctx, make, arg):
    raises(ctx, hpcdl.ContiguityError, "contiguous", lambda: hpcdl.allreduce(make()), "allreduce")
    raises(ctx, hpcdl.ContiguityError, "contiguous", lambda: hpcdl.broadcast(make()), "broadcast")
    raises(ctx, hpcdl.ContiguityError, "contiguous",
           lambda: hpcdl.allreduce(np.zeros(5, np.float32), out=np.zeros(10, np.float32)[::2]))


def test_non_contiguous_output_is_named(ctx):
    err = raises(ctx, hpcdl.ContiguityError, "'out'",
                 lambda: hpcdl.allreduce(np.zeros(5, np.float32), out=np.zeros(10, np.float32)[::2]))
    assert "not C-contiguous" in str(err)


def test_mismatched_device(ctx):
    host = np.zeros(6, np.float32)
    raises(ctx, hpcdl.DeviceMismatchError, "cuda:0",
           lambda: hpcdl.allreduce(host, out=FakeCudaArray(np.zeros(6, np.float32))), "allreduce")
    raises(ctx, hpcdl.DeviceMismatchError, "same device",
           lambda: hpcdl.allgather(FakeCudaArray(np.zeros(6, np.float32)),
                                   out=np.zeros(6 * ctx.size, np.float32)), "allgather")
    raises(ctx, hpcdl.DeviceMismatchError, "host",
           lambda: hpcdl.reduce_scatter(host, out=FakeCudaArray(np.zeros(6, np.float32))),
           "reduce_scatter")


def test_mismatched_output_dtype(ctx):
    raises(ctx, hpcdl.DtypeError, "differs from output dtype float64",
           lambda: hpcdl.allreduce(np.zeros(4, np.float32), out=np.zeros(4, np.float64)))


def test_wrong_output_size(ctx):
    raises(ctx, hpcdl.InvalidArgumentError, "holds 6 elements",
           lambda: hpcdl.allreduce(np.zeros(8), out=np.zeros(6)), "allreduce")
    raises(ctx, hpcdl.InvalidArgumentError, f"expected {8 * ctx.size}",
           lambda: hpcdl.allgather(np.zeros(8), out=np.zeros(8 * ctx.size + 1)), "allgather")
    mine = hpcdl.collectives.block_counts(9, ctx.size)[ctx.rank]
    raises(ctx, hpcdl.InvalidArgumentError, f"expected {mine}",
           lambda: hpcdl.reduce_scatter(np.zeros(9), out=np.zeros(mine + 1)), "reduce_scatter")


def test_bad_op_name(ctx):
    err = raises(ctx, hpcdl.InvalidArgumentError, "unknown op 'mean'",
                 lambda: hpcdl.allreduce(np.zeros(3), op="mean"), "allreduce")
    assert "'avg'" in str(err)  # the message lists the choices
    raises(ctx, hpcdl.InvalidArgumentError, "unknown op 'xor'",
           lambda: hpcdl.reduce_scatter(np.zeros(3), op="xor"), "reduce_scatter")


def test_unhashable_op_and_algorithm(ctx):
    """A list where a name belongs gets hpcdl's error, not a TypeError from a dict lookup."""
    raises(ctx, hpcdl.InvalidArgumentError, "unknown op ['sum']",
           lambda: hpcdl.allreduce(np.zeros(3), op=["sum"]), "allreduce")
    raises(ctx, hpcdl.InvalidArgumentError, "unknown algorithm ['ring']",
           lambda: hpcdl.allreduce(np.zeros(3), algorithm=["ring"]), "allreduce")


@pytest.mark.parametrize("root", [-1, "size", 1.0, "0", None, True])
def test_bad_root(ctx, root):
    root = ctx.size if root == "size" else root
    raises(ctx, hpcdl.InvalidArgumentError, f"root={root!r}",
           lambda: hpcdl.broadcast(np.zeros(3), root=root), "broadcast")


def test_bad_algorithm_name(ctx):
    err = raises(ctx, hpcdl.InvalidArgumentError, "unknown algorithm 'fastest'",
                 lambda: hpcdl.allreduce(np.zeros(3), algorithm="fastest"), "allreduce")
    assert "'native'" in str(err)


def test_read_only_output(ctx):
    ro = np.zeros(4)
    ro.flags.writeable = False
    raises(ctx, hpcdl.InvalidArgumentError, "read-only", lambda: hpcdl.allreduce(ro), "allreduce")
    raises(ctx, hpcdl.InvalidArgumentError, "read-only",
           lambda: hpcdl.allreduce(np.zeros(4), out=ro), "allreduce")
    raises(ctx, hpcdl.InvalidArgumentError, "read-only", lambda: hpcdl.broadcast(ro), "broadcast")
    raises(ctx, hpcdl.InvalidArgumentError, "read-only",
           lambda: hpcdl.allreduce(FakeCudaArray(np.zeros(4)),
                                   out=FakeCudaArray(np.zeros(4), readonly=True)), "allreduce")
    # a read-only *input* is fine when the result goes elsewhere
    out = np.zeros(4)
    hpcdl.allreduce(ro, out=out)
    hpcdl.allgather(ro)


def test_unallocatable_output_kind(ctx):
    raises(ctx, hpcdl.InvalidArgumentError, "pass out=",
           lambda: hpcdl.allgather(FakeCudaArray(np.zeros(4))), "allgather")


def test_errors_leave_the_communicator_usable(ctx):
    """A refused call communicates nothing, so the next collective still lines up."""
    with pytest.raises(hpcdl.HpcdlError):
        hpcdl.allreduce(np.zeros(3, np.complex64))
    x = np.ones(3)
    hpcdl.allreduce(x)
    np.testing.assert_array_equal(x, np.full(3, ctx.size))


def test_mpi_errors_become_comm_errors(ctx):
    err = raises(ctx, hpcdl.CommError, "MPI_ERR_RANK",
                 lambda: ctx.comm.send(np.zeros(1), dest=ctx.size + 5), "send")
    assert f"rank {ctx.rank}/{ctx.size}" in str(err)


# --- HPCDL_DEBUG=1 ------------------------------------------------------------------

@pytest.fixture
def debug_on():
    """The cross-rank check on for one test (every rank runs the same tests), then off."""
    hpcdl.set_debug(True)
    yield
    hpcdl.set_debug(False)


def test_debug_switch(ctx, monkeypatch):
    """HPCDL_DEBUG is read at start (a module flag: os.environ.get would cost ~1 us a
    call); set_debug switches it, after a cached fast-path plan too."""
    from hpcdl.collectives.debug import debug_enabled

    hpcdl.allreduce(np.ones(7))  # caches the fast-path plan for this call
    for value, on in (("1", True), ("0", False), ("yes", True), ("", False)):
        monkeypatch.setenv("HPCDL_DEBUG", value)
        assert hpcdl.set_debug() is on and debug_enabled() is on, value
    monkeypatch.delenv("HPCDL_DEBUG")
    assert hpcdl.set_debug() is False
    assert hpcdl.set_debug(True) is True and debug_enabled()
    try:
        x = np.ones(7)
        hpcdl.allreduce(x)  # now through the checked path: the same answer
        np.testing.assert_array_equal(x, np.full(7, float(ctx.size)))
    finally:
        hpcdl.set_debug(False)
    assert not debug_enabled()
    with pytest.raises(hpcdl.InvalidArgumentError,
                       match=f"rank {ctx.rank}/{ctx.size}.*set_debug.*on='1': use True, False "
                       "or None"):
        hpcdl.set_debug("1")


def test_debug_mode_passes_matching_calls(ctx, debug_on):
    x = np.ones(5, np.float32)
    hpcdl.allreduce(x, op="sum")
    hpcdl.broadcast(x, root=0)
    g = hpcdl.allgather(x)
    rs = hpcdl.reduce_scatter(np.ones(5, np.float32))
    hpcdl.barrier()
    h = hpcdl.allreduce(np.ones(2), async_op=True)
    np.testing.assert_array_equal(h.wait(), np.full(2, ctx.size))
    np.testing.assert_array_equal(x, np.full(5, ctx.size))
    assert g.shape == (ctx.size, 5) and rs.sum() == ctx.size * rs.size


def _mismatch(ctx, call):
    try:
        call()
    except hpcdl.MismatchError as exc:
        return exc
    return None


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("odd", [1, 0])
def test_debug_mode_names_the_rank_that_differs(ctx, debug_on, odd):
    """Rank ``odd`` passes different arguments; every rank raises naming it."""
    me = ctx.rank == odd
    cases = {
        "shape": lambda: hpcdl.allreduce(np.ones(6 if me else 5, np.float32)),
        "dtype": lambda: hpcdl.allreduce(np.ones(5, np.float64 if me else np.float32)),
        "op": lambda: hpcdl.allreduce(np.ones(5), op="max" if me else "sum"),
        "algorithm": lambda: hpcdl.allreduce(np.ones(5), algorithm="native" if me else "ring"
                                             if "ring" in hpcdl.algorithm_names() else "auto"),
        "root": lambda: hpcdl.broadcast(np.ones(5), root=1 if me else 0),
        "allgather shape": lambda: hpcdl.allgather(np.ones(3 if me else 4)),
        "reduce_scatter op": lambda: hpcdl.reduce_scatter(np.ones(7), op="min" if me else "max"),
        "async": lambda: hpcdl.allreduce(np.ones(4 if me else 2), async_op=True).wait(),
    }
    errors = {name: _mismatch(ctx, call) for name, call in cases.items()}
    # the job is still in step afterwards
    x = np.ones(3)
    hpcdl.allreduce(x)
    for name, err in errors.items():
        assert err is not None, f"{name}: no MismatchError on rank {ctx.rank}"
        msg = str(err)
        assert f"rank {ctx.rank}/{ctx.size}" in msg and f"{err.op}: " in msg, msg
        assert f"rank {odd} has" in msg, f"{name}: {msg}"
        if ctx.size > 2:  # a majority exists: only the odd one out is named as differing
            majority = {(1, 3): "0, 2", (0, 3): "1-2", (1, 4): "0, 2-3", (0, 4): "1-3"}.get(
                (odd, ctx.size), "")
            assert f"the other ranks ({majority}" in msg, f"{name}: {msg}"
            assert msg.count(" has ") == 1, f"{name}: {msg}"
        else:  # two ranks, two answers: both are shown
            assert "rank 0 has" in msg and "rank 1 has" in msg, f"{name}: {msg}"
    np.testing.assert_array_equal(x, np.full(3, ctx.size))


def test_debug_message_at_many_ranks():
    """The message names the odd ranks and compresses the majority into ranges."""
    from hpcdl.collectives.debug import check_same_call
    from hpcdl.comm import run_ranks

    def body(comm):
        try:
            check_same_call(comm, "allreduce", shape=(6,) if comm.rank in (2, 5) else (5,),
                            dtype="float32")
        except hpcdl.MismatchError as exc:
            return str(exc)

    msgs = run_ranks(8, body)
    assert msgs[3].startswith("[hpcdl rank 3/8] allreduce: arguments differ across ranks: ")
    assert msgs[3].endswith("ranks 2, 5 have shape=(6,), dtype=float32; the other ranks "
                            "(0-1, 3-4, 6-7) have shape=(5,), dtype=float32")
    assert all(m.split("] ", 1)[1] == msgs[0].split("] ", 1)[1] for m in msgs)
