"""Seeded per-rank data and NumPy references for the collective tests.

Every rank regenerates *all* ranks' inputs from ``(seed, rank)`` seeds, so it
can compute the expected result of a collective locally and compare.

Tolerances (stated once, used everywhere):

* int32/int64, and min/max on every dtype: exact.
* float32/float64 sum/avg/prod: MPI may add in any order, so
  ``|got - ref| <= 4 * n * eps * sum_i |x_i|`` (prod: relative ``4 * n * eps``).
* float16/bfloat16: the native path reduces in float32 and rounds once (avg
  divides in float32 first, so a float16 sum that overflows still averages). The
  reference does the same;
  a different float32 summation order may move the rounded result by one unit
  in the last place, so ``rtol = eps(dtype)`` (1 ulp: 2**-10 for float16,
  2**-7 for bfloat16) plus ``atol = 1e-6 * sum_i |x_i|`` for results near zero.
  Reducing raw bytes or reading the bits as FLOAT misses by orders of magnitude.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import ml_dtypes
import numpy as np

from hpcdl.ops import SUPPORTED_DTYPES, is_half

OPS = ("sum", "avg", "min", "max", "prod")
_UFUNC = {"sum": np.add, "avg": np.add, "min": np.minimum, "max": np.maximum,
          "prod": np.multiply}


def ops_for(dtype: str) -> tuple[str, ...]:
    """The ops a dtype supports (avg needs a floating dtype)."""
    return tuple(o for o in OPS if not (o == "avg" and np.dtype(SUPPORTED_DTYPES[dtype]).kind == "i"))


def rank_input(seed: int, rank: int, shape: Sequence[int], dtype: str, op: str = "sum") -> np.ndarray:
    """Rank ``rank``'s input: random, never all zero, small enough not to overflow any op."""
    dt = SUPPORTED_DTYPES[dtype]
    rng = np.random.default_rng([seed, rank])
    count = int(np.prod(shape, dtype=np.int64))
    if dt.kind == "i":
        lo, hi = (-3, 4) if op == "prod" else (-1000, 1001)
        x = rng.integers(lo, hi, count)
    elif op == "prod":  # |x| in [0.5, 1.5): a product of 4 stays in range
        x = rng.uniform(0.5, 1.5, count) * rng.choice([-1.0, 1.0], count)
    else:
        x = rng.uniform(-1.0, 1.0, count)
    return x.astype(dt).reshape(shape)


def all_inputs(seed: int, size: int, shape: Sequence[int], dtype: str, op: str = "sum") -> list[np.ndarray]:
    return [rank_input(seed, r, shape, dtype, op) for r in range(size)]


def reduce_reference(xs: Sequence[np.ndarray], op: str) -> np.ndarray:
    """What an allreduce of ``xs`` over ``len(xs)`` ranks should give."""
    dt = xs[0].dtype
    n = len(xs)
    if dt.kind == "i":
        acc = functools.reduce(lambda a, b: _UFUNC[op](a, b), [x.astype(np.int64) for x in xs])
        return acc.astype(dt)
    wide = np.float32 if is_half(dt) else np.float64
    acc = functools.reduce(lambda a, b: _UFUNC[op](a, b), [x.astype(wide) for x in xs])
    if op == "avg" and n > 1:  # divided in the wide type, before the final rounding
        acc = (acc.astype(np.float64) * (1.0 / n)).astype(wide)
    return acc.astype(dt)  # the native path rounds once, after the whole reduction


def _eps(dt: np.dtype) -> float:
    return float(ml_dtypes.finfo(dt).eps)


def close(got: np.ndarray, ref: np.ndarray, xs: Sequence[np.ndarray], op: str) -> None:
    """Assert ``got`` matches ``ref`` within the tolerance stated in this module's docstring."""
    got = np.asarray(got).reshape(ref.shape)
    assert got.dtype == ref.dtype, (got.dtype, ref.dtype)
    dt = ref.dtype
    if dt.kind == "i" or op in ("min", "max"):
        np.testing.assert_array_equal(got, ref)
        return
    n = len(xs)
    g, r = got.astype(np.float64), ref.astype(np.float64)
    mag = np.sum([np.abs(x.astype(np.float64)) for x in xs], axis=0)
    if is_half(dt):
        assert_within(g, r, _eps(dt) * np.abs(r) + (0 if op == "prod" else 1e-6 * mag))
        return
    eps = _eps(dt)
    if op == "prod":
        np.testing.assert_allclose(g, r, rtol=4 * n * eps, atol=0)
    else:
        assert_within(g, r, 4 * n * eps * mag)


def assert_within(got: np.ndarray, ref: np.ndarray, tol: np.ndarray) -> None:
    err = np.abs(got - ref)
    bad = np.flatnonzero(err > tol)
    if bad.size:
        i = bad[0]
        raise AssertionError(f"{bad.size} of {err.size} elements off; first at {i}: "
                             f"got {got.flat[i]!r}, expected {ref.flat[i]!r} (tol {np.ravel(tol)[i]!r})")


class Failures:
    """Collects assertion failures so a test asserts only after all its collectives ran.

    (A rank that stops at the first failed assert would leave the others waiting
    in the next collective.)
    """

    def __init__(self) -> None:
        self.messages: list[str] = []

    def check(self, label: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except AssertionError as exc:
            self.messages.append(f"{label}: {exc}")

    def expect(self, label: str, cond: bool, detail: str = "") -> None:
        if not cond:
            self.messages.append(f"{label}: {detail or 'condition false'}")

    def assert_none(self) -> None:
        assert not self.messages, f"{len(self.messages)} failure(s):\n" + "\n".join(self.messages[:20])
