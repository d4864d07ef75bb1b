"""Property tests (hypothesis) for what users pass in: tuning tables, arguments, buffers.

Each property states what must happen for *every* input of a family: a
well-formed input gives the NumPy reference answer, a malformed one a clear
:class:`~hpcdl.errors.HpcdlError`, never a wrong answer or a crash from deep
inside NumPy or MPI. The families: whole tuning tables and their rule lists,
strided views (NumPy, torch, ``__cuda_array_interface__``), every NumPy dtype,
``out`` of every size, dtype and writability, op and root objects. Answers
are checked on 3 in-process ranks, so a no-op cannot pass for a reduction.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import hpcdl
from helpers.fakes import FakeCudaArray
from hpcdl.collectives import block_counts, select
from hpcdl.comm import run_ranks
from hpcdl.errors import ContiguityError, DtypeError, HpcdlError, InvalidArgumentError
from hpcdl.ops import SUPPORTED_DTYPES

# derandomize: under mpiexec every rank must draw the same examples (collectives match)
FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

# Mostly plausible entries (so that valid, unsorted and almost-valid tables all occur),
# sometimes the wrong type: True, a float, a string, a negative number, null too early.
_limits = st.one_of(st.integers(0, 1 << 20), st.integers(0, 1 << 20), st.integers(0, 1 << 20),
                    st.none(), st.booleans(), st.integers(-5, -1), st.floats(0, 1e6),
                    st.text(max_size=3))
_good_names = st.sampled_from(["native", "ring", "tree", "chunked"])
_names = st.one_of(_good_names, _good_names, _good_names, st.sampled_from(["warp", ""]),
                   st.integers(0, 3))
_last = st.one_of(st.tuples(st.none(), _good_names), st.tuples(st.none(), _good_names),
                  st.tuples(_limits, _names))
_rules = st.tuples(st.lists(st.tuples(_limits, _names), max_size=4), _last).map(
    lambda p: [list(r) for r in p[0]] + [list(p[1])])


def _well_formed(rules: list) -> bool:
    if not rules or rules[-1][0] is not None:
        return False
    limits = [r[0] for r in rules[:-1]]
    if any(type(x) is not int or x < 0 for x in limits):
        return False
    if any(b <= a for a, b in zip(limits, limits[1:])):
        return False
    return all(isinstance(r[1], str) and r[1] in ("native", "ring", "tree", "chunked")
               for r in rules)


@FAST
@given(rules=_rules,
       nbytes=st.integers(0, 1 << 21))
def test_a_table_is_accepted_exactly_when_choose_can_trust_it(rules, nbytes, tmp_path_factory):
    """Unsorted limits, ``True`` or a float as max_bytes are rejected; a valid table's
    choice is the first rule whose max_bytes holds the message (the documented rule)."""
    table = {"rules": {"float": {"2": rules}}}
    path = tmp_path_factory.mktemp("tables") / "t.json"
    path.write_text(json.dumps(table))
    if not _well_formed(rules):
        with pytest.raises(InvalidArgumentError, match="t.json"):
            select.load_table(path)
        return
    select.load_table(path)
    expect = next(r[1] for r in rules if r[0] is None or nbytes <= r[0])
    select._table, saved = table, select._table
    select._rules.clear()
    try:
        got = select.choose(SimpleNamespace(size=2), nbytes, np.dtype(np.float32))
    finally:
        select._table = saved
        select._rules.clear()
    assert got == expect


@FAST
@given(n=st.integers(1, 40), out_n=st.integers(0, 41),
       dtype=st.sampled_from(["float64", "float32", "int32", "int64"]))
def test_out_of_any_wrong_size_is_refused(ctx, n, out_n, dtype):
    """``out`` must hold exactly the result: any other size is an error naming 'out'."""
    import hpcdl

    x = np.ones(n, dtype)
    out = np.zeros(out_n, dtype)
    if out_n == n:
        hpcdl.allreduce(x, out=out)
        np.testing.assert_array_equal(out, np.full(n, ctx.size, dtype))
    else:
        with pytest.raises(InvalidArgumentError, match="out"):
            hpcdl.allreduce(x, out=out)


@FAST
@given(op=st.one_of(st.integers(), st.floats(allow_nan=False), st.none(), st.booleans(),
                    st.lists(st.integers(), max_size=2),
                    st.text(max_size=6).filter(lambda s: s.lower() not in
                                               ("sum", "avg", "min", "max", "prod"))),
       root=st.one_of(st.booleans(), st.floats(allow_nan=False), st.text(max_size=3),
                      st.integers(-3, -1), st.integers(64, 10**6)))
def test_bad_op_and_root_objects_are_clear_errors(ctx, op, root):
    """An op or root that is not a valid choice raises an HpcdlError, never a TypeError
    from deep inside, a hang or a wrong answer."""
    import hpcdl
    from hpcdl.errors import HpcdlError

    x = np.ones(3)
    with pytest.raises(HpcdlError):
        hpcdl.allreduce(x, op=op)
    with pytest.raises(HpcdlError):
        hpcdl.broadcast(x, root=root)
    np.testing.assert_array_equal(x, np.ones(3))


# --- tables: the whole structure, not only one rule list ---------------------------

_kinds = st.one_of(st.sampled_from(["float", "half"]), st.sampled_from(["float", "half"]),
                   st.text(max_size=4))
_ranks_keys = st.one_of(st.integers(1, 64).map(str), st.integers(1, 64).map(str),
                        st.sampled_from(["", "-1", "2.0", "x"]))
_good_rules = st.lists(st.integers(0, 1 << 20), max_size=3, unique=True).map(sorted).flatmap(
    lambda limits: st.tuples(*[_good_names for _ in limits], _good_names).map(
        lambda names: [[lim, n] for lim, n in zip(limits, names)] + [[None, names[-1]]]))
_tables = st.one_of(
    st.fixed_dictionaries({"rules": st.dictionaries(
        _kinds, st.one_of(st.dictionaries(_ranks_keys, st.one_of(_good_rules, _good_rules,
                                                                 _rules, st.just([])),
                                          max_size=3),
                          st.just({}), st.just([]), st.none()),
        max_size=3)}),
    st.one_of(st.none(), st.lists(st.integers(), max_size=2), st.just({}),
              st.just({"rules": []}), st.just({"rules": None})))


def _table_ok(table) -> bool:
    if not isinstance(table, dict) or not isinstance(table.get("rules"), dict):
        return False
    for kind, per_size in table["rules"].items():
        if kind not in ("float", "half") or not isinstance(per_size, dict) or not per_size:
            return False
        for ranks, rules in per_size.items():
            if not ranks.isdigit() or not isinstance(rules, list) or not _well_formed(rules):
                return False
    return True


@FAST
@given(table=_tables)
def test_validate_table_accepts_exactly_the_well_formed(table):
    """Any object as a whole table: accepted (and returned unchanged) exactly when every
    kind, rank count and rule list is well formed, else an error naming where it came from."""
    if _table_ok(table):
        assert select.validate_table(table, "prop.json") is table
    else:
        with pytest.raises(InvalidArgumentError, match="prop.json"):
            select.validate_table(table, "prop.json")


# --- strides ------------------------------------------------------------------------

_steps = st.tuples(st.integers(1, 3), st.integers(1, 3))


@pytest.mark.fake_ranks
@FAST
@given(rows=st.integers(1, 6), cols=st.integers(1, 6), steps=_steps, transpose=st.booleans(),
       kind=st.sampled_from(["numpy", "torch", "cai"]))
def test_any_strided_view_is_refused_or_reduced_exactly(rows, cols, steps, transpose, kind):
    """A view with any strides: refused with a ContiguityError naming the argument
    unless its elements are contiguous, and then reduced exactly (3 in-process ranks)."""
    base = np.arange(rows * cols * 9, dtype=np.float64).reshape(rows * 3, cols * 3)
    view = base[::steps[0], ::steps[1]][:rows, :cols]
    if transpose:
        view = view.T
    contiguous = view.flags.c_contiguous

    def make(a: np.ndarray):
        if kind == "torch":
            return torch.from_numpy(a)
        if kind == "cai":  # a device array's strides come from its own interface
            return FakeCudaArray(a, strides=a.strides)
        return a

    def body(c):
        mine = base * (c.rank + 1)
        x = mine[::steps[0], ::steps[1]][:rows, :cols]
        x = x.T if transpose else x
        if not contiguous:
            with pytest.raises(ContiguityError, match=f"rank {c.rank}.*'tensor'.*contiguous"):
                hpcdl.allreduce(make(x), comm=c)
            np.testing.assert_array_equal(mine, base * (c.rank + 1))
            return None
        hpcdl.allreduce(make(x), comm=c)  # in place, through the view
        return mine

    results = run_ranks(3, body)
    if contiguous:
        for r, got in enumerate(results):
            expect = base * (r + 1)  # outside the view: this rank's own values
            expect[::steps[0], ::steps[1]][:rows, :cols] = \
                base[::steps[0], ::steps[1]][:rows, :cols] * 6  # inside: 1 + 2 + 3 times
            np.testing.assert_array_equal(got, expect)


# --- dtypes -------------------------------------------------------------------------

_odd_dtypes = st.sampled_from(["uint8", "int8", "int16", "uint32", "uint64", "bool", "complex64",
                               "complex128", "longdouble", ">f4", ">i8", "U3", "S2", "O",
                               "datetime64[s]", "timedelta64[ms]", [("a", "f4"), ("b", "i4")]])


@pytest.mark.fake_ranks
@FAST
@given(dtype=st.one_of(_odd_dtypes, st.sampled_from(list(SUPPORTED_DTYPES))),
       n=st.integers(0, 9), op=st.sampled_from(["sum", "avg", "min", "max", "prod"]))
def test_every_dtype_is_reduced_exactly_or_refused(dtype, n, op):
    """Any NumPy dtype: a supported one is reduced like NumPy (3 in-process ranks; avg only
    for floats), any other is a DtypeError naming the rank, never reinterpreted bytes."""
    dt = np.dtype(dtype)
    ok = dt in SUPPORTED_DTYPES.values() and not (op == "avg" and dt.kind == "i")

    def body(c):
        x = np.zeros(n, dt)
        if not ok:
            with pytest.raises(DtypeError, match=f"rank {c.rank}"):
                hpcdl.allreduce(x, op=op, comm=c)
            return None
        x[...] = np.arange(n) % 3 + c.rank + 1  # small integers: exact in every dtype
        hpcdl.allreduce(x, op=op, comm=c)
        return x

    results = run_ranks(3, body)
    if ok:
        per_rank = [(np.arange(n) % 3 + r + 1).astype(np.float64) for r in range(3)]
        ufunc = {"sum": np.add, "avg": np.add, "min": np.minimum, "max": np.maximum,
                 "prod": np.multiply}[op]
        expect = ufunc.reduce(np.stack(per_rank), axis=0) / (3 if op == "avg" else 1)
        for got in results:
            np.testing.assert_allclose(got.astype(np.float64), expect, rtol=1e-2)


# --- out of allgather and reduce_scatter -------------------------------------------

@pytest.mark.fake_ranks
@FAST
@given(n=st.integers(0, 12), extra=st.integers(-3, 3),
       out_dtype=st.sampled_from(["float64", "float32", "int64"]),
       which=st.sampled_from(["allgather", "reduce_scatter"]), readonly=st.booleans())
def test_out_of_allgather_and_reduce_scatter(n, extra, out_dtype, which, readonly):
    """``out`` with the wrong size, the wrong dtype or read-only is an error naming 'out' on
    every rank alike; the right one receives exactly the NumPy answer (3 in-process ranks)."""
    size = 3

    def body(c):
        x = np.arange(n, dtype=np.float64) + c.rank
        want = size * n if which == "allgather" else block_counts(n, size)[c.rank]
        # the same verdict on every rank: a wrong size stays wrong where want is 0
        out = np.zeros(want + extra if want + extra >= 0 else want - extra, out_dtype)
        out.flags.writeable = not readonly
        fn = hpcdl.allgather if which == "allgather" else hpcdl.reduce_scatter
        if extra or out_dtype != "float64" or readonly:
            with pytest.raises(HpcdlError, match=f"rank {c.rank}.*(out|dtype)"):
                fn(x, out=out, comm=c)
            return None
        return fn(x, out=out, comm=c)

    results = run_ranks(size, body)
    if any(r is None for r in results):  # refused: on every rank alike
        assert all(r is None for r in results)
        return
    xs = [np.arange(n, dtype=np.float64) + r for r in range(size)]
    counts = block_counts(n, size)
    for r, got in enumerate(results):
        if which == "allgather":
            np.testing.assert_array_equal(got, np.concatenate(xs))
        else:
            start = sum(counts[:r])
            np.testing.assert_array_equal(got, np.sum(xs, axis=0)[start:start + counts[r]])
