"""Property tests (hypothesis) for what users pass in: tuning tables, arguments, buffers.

Each property states what must happen for *every* input of a family: a
well-formed input gives the NumPy reference answer, a malformed one a clear
:class:`~hpcdl.errors.HpcdlError`, never a wrong answer or a crash from deep
inside NumPy or MPI.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import numpy as np  # noqa: E402

from hpcdl.collectives import select  # noqa: E402
from hpcdl.errors import InvalidArgumentError  # noqa: E402

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
