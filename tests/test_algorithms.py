"""Allreduce algorithms (ring, tree, hierarchical, auto), partial reduce, the auto table.

Every algorithm is checked against a NumPy reference on every dtype and op:
in-process over the fake communicator (fast, any rank count), and under the
real MPI job this file runs in (1, 2, 3, 4 ranks in CI). Floating-point sums
are held to the bound "one rounding per addition": with ``n`` ranks a result
element is ``n - 1`` additions away from the inputs, each rounding off at most
``u |partial sum|`` (``u`` the unit roundoff of the dtype), and every partial
sum is at most ``S = sum |x_i|``, so ``|result - exact| <= (n - 1) u S``.
For float16/bfloat16 this holds only because each addition is computed in
float32 and rounded once; adding in half precision would round twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import hpcdl
from hpcdl.collectives import ring as ring_mod
from hpcdl.collectives import select
from hpcdl.collectives.hierarchical import NodeComms, hierarchical_allreduce_nodes
from hpcdl.collectives.partial import DigitSchedule, digits_needed
from hpcdl.collectives.registry import ALLREDUCE, resolve_allreduce
from hpcdl.comm import run_ranks
from hpcdl.errors import ContiguityError, DtypeError, InvalidArgumentError
from hpcdl.ops import SUPPORTED_DTYPES, ReduceOp, bfloat16, finish_avg
from hpcdl.runtime import under_launcher
from hpcdl.tune import merge_rules, rules_from_timings

ALGORITHMS = ["native", "chunked", "ring", "tree", "hierarchical"]
OPS = list(ReduceOp)
UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11,
                 "bfloat16": 2.0**-8}
UNDER_MPI = under_launcher()
# in-process tests need no MPI job: run them once, in the serial pass
in_process = pytest.mark.skipif(UNDER_MPI, reason="in-process test: runs in the serial pass")


def sample(rng: np.random.Generator, dtype: np.dtype, op: ReduceOp, count: int) -> np.ndarray:
    """Random, never-zero inputs whose exact reduction over <= 8 ranks is representable."""
    if dtype.kind == "i":
        if op is ReduceOp.PROD:
            return rng.choice(np.array([-2, -1, 1, 2]), count).astype(dtype)
        return rng.integers(-1000, 1000, count).astype(dtype)
    if op is ReduceOp.PROD:
        return rng.uniform(0.5, 1.5, count).astype(dtype)
    return rng.uniform(-4, 4, count).astype(dtype)


def reference(inputs: list[np.ndarray], op: ReduceOp) -> np.ndarray:
    wide = [x.astype(np.float64) if x.dtype.kind == "f" or x.dtype == bfloat16 else
            x.astype(np.int64) for x in inputs]
    stack = np.stack(wide)
    if op in (ReduceOp.SUM, ReduceOp.AVG):
        out = stack.sum(0)
        return out / len(inputs) if op is ReduceOp.AVG else out
    return {ReduceOp.MIN: np.min, ReduceOp.MAX: np.max, ReduceOp.PROD: np.prod}[op](stack, 0)


def mismatch(result: np.ndarray, inputs: list[np.ndarray], op: ReduceOp) -> str | None:
    """None if ``result`` is within the stated bound of the exact reduction, else why not."""
    n, dtype = len(inputs), inputs[0].dtype
    ref = reference(inputs, op)
    got = result.astype(np.float64) if dtype.kind == "f" or dtype == bfloat16 else result
    if dtype.kind == "i" or op in (ReduceOp.MIN, ReduceOp.MAX):
        ok = np.array_equal(got, ref.astype(got.dtype))
        tol = 0.0
    else:
        u = UNIT_ROUNDOFF[np.dtype(dtype).name]
        mags = np.sum([np.abs(x.astype(np.float64)) for x in inputs], axis=0)
        if op is ReduceOp.PROD:  # n - 1 roundings of a product, each relative
            tol = (n * u * 1.01) * np.abs(ref) + 1e-300
        else:  # n - 1 additions, the final rounding, and for avg the division
            scale = 1.0 / n if op is ReduceOp.AVG else 1.0
            tol = ((n - 1) * u * mags + 2 * u * np.abs(ref * (1 if op is ReduceOp.SUM else n))) \
                * scale * 1.0001
        ok = bool(np.all(np.abs(got - ref) <= tol))
    if ok:
        return None
    bad = int(np.argmax(np.abs(got - ref) - tol))
    return (f"{n} ranks, {np.dtype(dtype).name} {op.value} {result.size} elements: element {bad} "
            f"is {got[bad]!r}, exact {ref[bad]!r}")


# --- in process, over the fake communicator -----------------------------------------------

def run_fake(alg: str, inputs: list[np.ndarray], op: ReduceOp) -> list[np.ndarray]:
    def body(comm):
        buf = inputs[comm.rank].copy()
        ALLREDUCE[alg](comm, buf, op)
        if op is ReduceOp.AVG:  # algorithms reduce avg as a sum; the API divides
            finish_avg(buf, comm.size)
        return buf
    return run_ranks(len(inputs), body)


@in_process
@pytest.mark.parametrize("alg", ["chunked", "ring", "tree"])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7])
def test_fake_every_dtype_op_size(alg, n):
    rng = np.random.default_rng(n)
    errors = []
    for name, dtype in SUPPORTED_DTYPES.items():
        for op in OPS:
            if op is ReduceOp.AVG and dtype.kind == "i":
                continue
            for count in (0, 1, max(n - 1, 1), 1009):
                inputs = [sample(rng, dtype, op, count) for _ in range(n)]
                outs = run_fake(alg, inputs, op)
                for r, out in enumerate(outs):
                    why = mismatch(out, inputs, op)
                    if why:
                        errors.append(f"rank {r}: {why}")
                if count and not all(np.array_equal(o.view(np.uint8), outs[0].view(np.uint8))
                                     for o in outs):
                    errors.append(f"{name} {op.value} {count}: ranks differ bitwise")
    assert not errors, errors[:5]


@in_process
@pytest.mark.parametrize("n", [2, 3, 5])
def test_fake_ring_pipelines_many_chunks(n, monkeypatch):
    # tiny chunks: many messages per block on one tag, both scratch halves in use
    monkeypatch.setattr(ring_mod, "CHUNK_BYTES", 24)
    rng = np.random.default_rng(0)
    inputs = [sample(rng, np.dtype(np.float32), ReduceOp.SUM, 100_003) for _ in range(n)]
    outs = run_fake("ring", inputs, ReduceOp.SUM)
    assert all(mismatch(o, inputs, ReduceOp.SUM) is None for o in outs)


@in_process
@pytest.mark.parametrize("alg,n", [("ring", 3), ("tree", 3), ("tree", 5), ("hierarchical", 4)])
def test_algorithms_stay_within_the_guaranteed_tag_ub(alg, n):
    """MPI guarantees only tags up to 32767; the fake communicator enforces exactly that
    bound, so an algorithm using higher tags fails here as it would on such an MPI."""
    from hpcdl.comm.base import GUARANTEED_TAG_UB
    from hpcdl.errors import CommError

    def probe(comm):
        assert comm.tag_ub == GUARANTEED_TAG_UB
        with pytest.raises(CommError, match="TAG_UB"):
            comm.send(np.zeros(1), (comm.rank + 1) % comm.size, GUARANTEED_TAG_UB + 1)
    run_ranks(2, probe)
    rng = np.random.default_rng(n)
    inputs = [sample(rng, np.dtype(np.float64), ReduceOp.SUM, 5003) for _ in range(n)]
    assert all(mismatch(o, inputs, ReduceOp.SUM) is None for o in
               run_fake(alg, inputs, ReduceOp.SUM))


@in_process
@pytest.mark.parametrize("n,per_node", [(4, 2), (3, 2), (5, 2), (6, 3), (4, 1), (4, 4)])
def test_fake_hierarchical_node_layouts(n, per_node):
    rng = np.random.default_rng(n * 10 + per_node)
    errors = []
    for dtype in ("float32", "bfloat16", "int64"):
        dt = SUPPORTED_DTYPES[dtype]
        for count in (0, 1, n - 1, 1009):
            inputs = [sample(rng, dt, ReduceOp.SUM, count) for _ in range(n)]

            def body(comm):
                nodes = NodeComms.build(comm, comm.rank // per_node, tag="test")
                buf = inputs[comm.rank].copy()
                hierarchical_allreduce_nodes(nodes, buf, ReduceOp.SUM)
                return buf, nodes.even
            outs = run_ranks(n, body)
            assert all(even == (n % per_node == 0 or n < per_node) for _, even in outs)
            errors += [why for o, _ in outs if (why := mismatch(o, inputs, ReduceOp.SUM))]
    assert not errors, errors[:5]


@in_process
def test_scratch_is_reused_and_grows():
    def body(comm):
        buf = np.ones(1000, np.float32)
        ALLREDUCE["ring"](comm, buf, ReduceOp.SUM)
        first = comm._hpcdl_scratch["ring:a"]
        ALLREDUCE["ring"](comm, buf, ReduceOp.SUM)
        same = comm._hpcdl_scratch["ring:a"] is first
        ALLREDUCE["ring"](comm, np.ones(100_000, np.float32), ReduceOp.SUM)
        grown = comm._hpcdl_scratch["ring:a"].nbytes >= 100_000 * 4 // comm.size
        return same, grown
    assert run_ranks(3, body) == [(True, True)] * 3


# --- partial reduce: the mixing guarantee, checked exhaustively for small jobs -------------

def simulate(values: np.ndarray, k: int, steps: range) -> np.ndarray:
    vals = values.astype(np.float64).copy()
    sched = DigitSchedule(k)
    for t in steps:
        for group in sched.groups(len(vals), t):
            vals[group] = vals[group].mean(axis=0)
    return vals


def test_partial_mixing_guarantee():
    for k in range(2, 6):
        for n in range(1, 70):
            d = digits_needed(n, k)
            sched = DigitSchedule(k)
            assert all(len(g) <= k for t in range(d) for g in sched.groups(n, t))
            for start in range(d):  # any window of consecutive steps, whatever its phase
                eye = np.eye(n)
                mixed = simulate(eye, k, range(start, start + 2 * d - 1))
                assert np.all(mixed > 0), (n, k, start)  # everyone influenced everyone
                if k ** d == n:  # power of k: exact global mean after D steps
                    exact = simulate(eye, k, range(start, start + d))
                    assert np.allclose(exact, 1.0 / n), (n, k, start)
    # 2D - 1 is tight: with n = 17, k = 2 some window of 2D - 2 steps leaves a pair unmixed
    d = digits_needed(17, 2)
    assert any(np.any(simulate(np.eye(17), 2, range(s, s + 2 * d - 2)) == 0) for s in range(d))


# --- under the MPI job this test file runs in --------------------------------------------

def gathered(ctx, x: np.ndarray) -> list[np.ndarray]:
    raw = np.ascontiguousarray(x).view(np.uint8)
    out = np.empty(ctx.size * raw.size, np.uint8)
    ctx.comm.allgather(raw, out)
    return [a.view(x.dtype) for a in out.reshape(ctx.size, -1)] if raw.size else \
        [x.copy() for _ in range(ctx.size)]


@pytest.mark.mpi_pass  # serially: test_fake_* above, at 1..7 in-process ranks
@pytest.mark.parametrize("alg", ALGORITHMS + ["auto"])
@pytest.mark.parametrize("dtype", list(SUPPORTED_DTYPES))
def test_mpi_every_op_and_size(ctx, rng, alg, dtype, monkeypatch):
    if alg == "ring":  # small chunks so the pipeline runs with several chunks per block
        monkeypatch.setattr(ring_mod, "CHUNK_BYTES", 256)
    dt = SUPPORTED_DTYPES[dtype]
    errors = []
    for op in OPS:
        if op is ReduceOp.AVG and dt.kind == "i":
            continue
        for count in sorted({0, 1, max(ctx.size - 1, 1), 1009}):
            x = sample(rng, dt, op, count).reshape(-1)
            inputs = gathered(ctx, x)
            y = x.copy()
            hpcdl.allreduce(y, op=op.value, algorithm=alg)
            results = gathered(ctx, y)
            errors += [f"{alg} rank {r}: {why}" for r, res in enumerate(results)
                       if (why := mismatch(res, inputs, op))]
            if count and any(not np.array_equal(res.view(np.uint8), results[0].view(np.uint8))
                             for res in results):
                errors.append(f"{alg} {dtype} {op.value} {count}: ranks differ bitwise")
    assert not errors, errors[:5]


@pytest.mark.mpi_pass  # serially: test_fake_* above, at 1..7 in-process ranks
@pytest.mark.parametrize("alg", ALGORITHMS + ["auto"])
def test_mpi_several_mib(ctx, rng, alg):
    x = rng.uniform(-1, 1, (3 << 20) // 4 + 7).astype(np.float32)  # 3 MiB and a bit
    inputs = gathered(ctx, x)
    hpcdl.allreduce(x, algorithm=alg)
    why = mismatch(x, inputs, ReduceOp.SUM)
    assert why is None, why


@pytest.mark.mpi_pass  # serially: test_fake_* above, at 1..7 in-process ranks
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("alg", ALGORITHMS)
def test_half_sum_loses_at_most_one_rounding_per_addition(ctx, rng, dtype, alg):
    # Positive data near the top of each binade: roundings all push the same way,
    # the worst case for accumulation. Bound: (n - 1) u S plus the final rounding.
    dt = SUPPORTED_DTYPES[dtype]
    x = rng.uniform(1.5, 2.0, 4099).astype(dt)
    inputs = gathered(ctx, x)
    hpcdl.allreduce(x, algorithm=alg)
    why = mismatch(x, inputs, ReduceOp.SUM)
    assert why is None, why


@pytest.mark.mpi_pass  # serially: test_fake_* above, at 1..7 in-process ranks
@pytest.mark.parametrize("per_node", [1, 2, 3])
def test_mpi_hierarchical_emulated_nodes(ctx, rng, per_node):
    # Build the node layout in-test (HPCDL_RANKS_PER_NODE needs a fresh job: see the
    # spawns test below). 4 ranks, per_node=2: two even nodes; 3 ranks: uneven.
    nodes = NodeComms.build(ctx.comm, ctx.rank // per_node, tag=f"test:hier{per_node}")
    errors = []
    for dtype in ("float64", "float16", "int32"):
        for count in (1, 1009, 70_001):
            x = sample(rng, SUPPORTED_DTYPES[dtype], ReduceOp.SUM, count)
            inputs = gathered(ctx, x)
            hierarchical_allreduce_nodes(nodes, x, ReduceOp.SUM)
            if (why := mismatch(x, inputs, ReduceOp.SUM)):
                errors.append(why)
    assert nodes.even == (ctx.size % per_node == 0 or ctx.size < per_node)
    assert not errors, errors[:3]


def test_mpi_partial_allreduce_matches_schedule(ctx, rng):
    k = 2
    x = rng.uniform(-1, 1, 33)
    start = gathered(ctx, x)
    steps = range(3, 3 + 2 * digits_needed(ctx.size, k) - 1)
    for t in steps:
        hpcdl.partial_allreduce(x, group_size=k, step=t)
    expect = simulate(np.stack(start), k, steps)[ctx.rank]
    sched = DigitSchedule(k)
    names = {sched.group(ctx.rank, ctx.size, t)[2] for t in steps}
    cached = getattr(ctx.comm, "_splits", None) or getattr(ctx.comm, "_named", {})
    assert np.allclose(x, expect, rtol=1e-12, atol=1e-14)
    assert names <= set(cached)  # group communicators are created once and kept
    if ctx.size > 1:
        mean = np.mean(np.stack(start), axis=0)
        if ctx.size in (2, 4):  # a power of k: everyone holds the exact mean
            assert np.allclose(x, mean)


def test_partial_allreduce_rejects_bad_arguments(ctx):
    x = np.ones(3)
    with pytest.raises(InvalidArgumentError, match="group_size"):
        hpcdl.partial_allreduce(x, group_size=1, step=0)
    with pytest.raises(InvalidArgumentError, match="step"):
        hpcdl.partial_allreduce(x, group_size=2, step=-1)


# --- the fast path must not hide the general path's checks --------------------------------

def test_fast_path_falls_back_for_errors(ctx):
    with pytest.raises(ContiguityError):
        hpcdl.allreduce(np.ones((4, 4), np.float32)[:, 1])
    with pytest.raises(DtypeError):
        hpcdl.allreduce(np.ones(4, np.int32), op="avg")
    with pytest.raises(InvalidArgumentError, match="unknown algorithm"):
        hpcdl.allreduce(np.ones(4, np.float32), algorithm="bogus")
    with pytest.raises(InvalidArgumentError, match="unknown op"):
        hpcdl.allreduce(np.ones(4, np.float32), op="mean")
    ro = np.ones(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(InvalidArgumentError, match="read-only"):
        hpcdl.allreduce(ro)
    x = np.full((2, 3), 2.0)
    assert hpcdl.allreduce(x, op="avg") is x and np.all(x == 2.0)
    y = np.full(5, float(ctx.rank + 1))
    hpcdl.allreduce(y, op=ReduceOp.MAX, algorithm="native")
    assert np.all(y == ctx.size)
    h = hpcdl.allreduce(np.ones(3), async_op=True)  # async: the general path, still correct
    assert np.all(h.wait() == ctx.size)


# --- auto and the crossover table ----------------------------------------------------------

def test_auto_follows_the_table(tmp_path, monkeypatch, ctx):
    table = {"version": 1, "source": "test", "rules": {
        "float": {"1": [[100, "tree"], [None, "ring"]], "3": [[None, "native"]]},
        "half": {"1": [[None, "hierarchical"]]}}}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table))
    monkeypatch.setenv("HPCDL_TUNING_FILE", str(path))
    # without measurements for the cost model, a rank count the table lacks uses the
    # nearest smaller one (with them, the model's crossovers: tests/test_model.py)
    monkeypatch.setattr(select, "model_rules", lambda size: None)
    select.reload()
    try:
        c = ctx.comm
        f32, f16 = np.dtype(np.float32), np.dtype(np.float16)
        small = resolve_allreduce("auto", c, 100, f32)[0]
        big = resolve_allreduce("auto", c, 101, f32)[0]
        half = resolve_allreduce("auto", c, 10, f16)[0]
        if c.size >= 3:
            assert small == big == "native"
        else:
            assert (small, big) == ("tree", "ring")
        assert half == "hierarchical"
        x = np.arange(300, dtype=np.float32)
        hpcdl.allreduce(x)
        assert np.array_equal(x, np.arange(300, dtype=np.float32) * c.size)
    finally:
        monkeypatch.delenv("HPCDL_TUNING_FILE")
        select.reload()


def test_bad_tables_are_rejected_with_the_path(tmp_path):
    for bad in ({"rules": {"float": {"2": [[10, "warp"], [None, "ring"]]}}},
                {"rules": {"float": {"2": [[10, "ring"]]}}},
                {"rules": {"int": {"2": [[None, "ring"]]}}}, [1, 2]):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(InvalidArgumentError, match="bad.json"):
            select.load_table(path)
    select.load_table(select.DEFAULT_TABLE)  # the shipped one is valid


def test_tune_rules_and_merge(tmp_path):
    timings = {4: {"native": 1.0, "ring": 3.0}, 64: {"native": 1.0, "ring": 2.0},
               1024: {"native": 5.0, "ring": 2.0}, 4096: {"native": 9.0, "ring": 4.0}}
    rules = rules_from_timings(timings)
    assert rules == [[256, "native"], [None, "ring"]]
    path = tmp_path / "sub" / "tuning.json"
    merge_rules(path, 2, {"float": rules}, "test")
    merge_rules(path, 4, {"float": [[None, "tree"]], "half": [[None, "ring"]]}, "test")
    table = select.load_table(path)
    assert table["rules"]["float"] == {"2": rules, "4": [[None, "tree"]]}


@pytest.mark.spawns
def test_hierarchical_and_tune_in_fresh_jobs(tmp_path):
    """4 ranks as 2 emulated nodes (HPCDL_RANKS_PER_NODE=2), then 3 ranks as uneven
    nodes; and ``hpcdl tune`` end to end writing a table that auto loads."""
    script = tmp_path / "hier.py"
    script.write_text(textwrap.dedent("""
        import numpy as np, hpcdl
        ctx = hpcdl.init()
        assert ctx.num_nodes == -(-ctx.size // 2), ctx
        for dtype in (np.float32, np.float16, np.int64):
            x = (np.arange(1, 100_001) % 7 + ctx.rank).astype(dtype)
            ref = sum((np.arange(1, 100_001) % 7 + r) for r in range(ctx.size))
            hpcdl.allreduce(x, algorithm="hierarchical")
            assert np.array_equal(x.astype(np.int64), ref), (ctx.rank, dtype)
        print("hier ok", ctx.rank, ctx.size, ctx.num_nodes)
    """))
    exe = Path(sys.executable).with_name("hpcdl")
    env = dict(os.environ, HPCDL_RANKS_PER_NODE="2")
    for n in (4, 3):
        done = subprocess.run([str(exe), "launch", "-n", str(n), "--", "python", str(script)],
                              env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count("hier ok") == n
    out = tmp_path / "tuning.json"
    done = subprocess.run([str(exe), "tune", "--ranks", "2", "--quick", "--quiet", "--out",
                           str(out), "--sizes", "4,65536"], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    table = select.load_table(out)
    assert set(table["rules"]) == {"float", "half"} and "2" in table["rules"]["float"]


def test_fast_path_plan_cache_follows_chooser_changes(ctx):
    """The numpy fast path caches what 'auto' resolved to; a new chooser or algorithm
    must take effect at once, and a custom (dynamic) chooser is asked on every call."""
    from hpcdl.collectives import registry
    from hpcdl.collectives.native import native_allreduce

    calls: list[str] = []

    def spy(comm, buf, op):
        calls.append("spy")
        native_allreduce(comm, buf, op)

    asked: list[int] = []

    def dynamic(comm, nbytes, dtype):
        asked.append(nbytes)
        return "spy"

    x = np.ones(257, np.float64)
    try:
        hpcdl.allreduce(x)                    # caches the table's answer
        registry.register_allreduce("spy", spy)
        registry.set_chooser(dynamic)
        for _ in range(3):
            hpcdl.allreduce(x)
        n_asked, n_calls = len(asked), len(calls)
        registry.set_chooser(registry.choose)
        hpcdl.allreduce(x)
    finally:
        registry.set_chooser(registry.choose)
        registry.ALLREDUCE.pop("spy", None)
        registry.invalidate_plans()
    if ctx.size > 1:
        assert n_asked == 3 and n_calls == 3
        assert len(calls) == 3                # back on the table: spy no longer runs
    assert np.all(x == ctx.size ** 5)


def test_tune_prefers_native_within_margin():
    """A crossover drawn from noise would send auto to a slower algorithm: another
    algorithm must beat native by more than NATIVE_MARGIN to be chosen."""
    from hpcdl.tune import NATIVE_MARGIN

    close = 1 - NATIVE_MARGIN / 2
    clear = 1 - NATIVE_MARGIN * 2
    timings = {1024: {"native": 1.0, "ring": close, "tree": 2.0},
               4096: {"native": 1.0, "ring": clear, "tree": 2.0}}
    assert rules_from_timings(timings) == [[2048, "native"], [None, "ring"]]


@in_process
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_sum_through_torch_is_numpy_bit_for_bit(monkeypatch, dtype):
    """``reduce_into`` sums float16/bfloat16 with torch when torch is loaded (30x faster
    than NumPy's half loops): the same float32 add and one rounding, bit for bit,
    including overflow to inf, subnormals and signed zeros; a NaN is a NaN (torch's
    bfloat16 NaN has another payload bit pattern than ml_dtypes')."""
    import torch  # noqa: F401 - the fast path is taken only when torch is imported

    from hpcdl.ops import _TORCH_HALF_MIN, reduce_into

    dt = np.dtype(dtype) if dtype == "float16" else bfloat16
    rng = np.random.default_rng(5)
    special = np.array([65504, -65504, 6e-8, -6e-8, 2**-24, 0.0, -0.0, np.inf, -np.inf,
                        np.nan, 1.0, 3.0], np.float64)
    for n in (_TORCH_HALF_MIN - 1, _TORCH_HALF_MIN, 3 * _TORCH_HALF_MIN + 17):
        a = np.where(rng.random(n) < 0.2, rng.choice(special, n),
                     rng.standard_normal(n) * 10.0 ** rng.integers(-6, 5, n)).astype(dt)
        b = np.where(rng.random(n) < 0.2, rng.choice(special, n),
                     rng.standard_normal(n) * 10.0 ** rng.integers(-6, 5, n)).astype(dt)
        fast = a.copy()
        with np.errstate(all="ignore"):  # below the threshold NumPy adds (and warns)
            reduce_into(fast, b, ReduceOp.SUM)
        with monkeypatch.context() as m:  # torch "not imported": NumPy's own loop
            m.setitem(sys.modules, "torch", None)
            slow = a.copy()
            with np.errstate(all="ignore"):
                reduce_into(slow, b, ReduceOp.SUM)
        with np.errstate(all="ignore"):
            ufunc = np.add(a, b)
        nan = np.isnan(ufunc.astype(np.float32))
        assert nan.any() and (np.isnan(fast.astype(np.float32)) == nan).all()
        np.testing.assert_array_equal(slow.view(np.uint16), ufunc.view(np.uint16))
        np.testing.assert_array_equal(fast.view(np.uint16)[~nan], ufunc.view(np.uint16)[~nan])
    # strided or read-only operands keep the NumPy loop, with the same answer
    a = rng.standard_normal(4 * _TORCH_HALF_MIN).astype(dt)
    b = rng.standard_normal(4 * _TORCH_HALF_MIN).astype(dt)
    view = a.copy()[::2]
    reduce_into(view, b[::2], ReduceOp.SUM)
    np.testing.assert_array_equal(view.view(np.uint16), np.add(a[::2], b[::2]).view(np.uint16))
    ro = b.copy()
    ro.flags.writeable = False
    dst = a.copy()
    reduce_into(dst, ro, ReduceOp.SUM)
    np.testing.assert_array_equal(dst.view(np.uint16), np.add(a, b).view(np.uint16))
