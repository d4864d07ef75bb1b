"""Online tuning of ``auto`` (hpcdl/collectives/online.py): agreement, stability, cache, off.

Timings are made to differ across ranks deterministically: each rank gets a fake
clock, and the candidates are test algorithms that run the native allreduce
(so results are still checked against NumPy) and advance this rank's clock by a
cost of their own. A rank alone would pick another winner than the ranks
together: agreement is really tested, not assumed.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import hpcdl
from hpcdl.collectives import online, registry
from hpcdl.collectives.native import native_allreduce
from hpcdl.collectives.tune_cache import cache_file, fingerprint, load_choices, save_choice
from hpcdl.errors import InvalidArgumentError

from helpers.fakes import group_params, on_group
from helpers.numpy_reference import Failures, all_inputs, close, reduce_reference

CANDIDATES = ["t_a", "t_b", "t_c"]
N = 1000  # float64 elements: 8000 B, one size class


class Clock:
    """This rank's fake time; the test algorithms advance it by their cost."""

    def __init__(self, costs: dict[str, float]) -> None:
        self.t, self.costs, self.calls = 0.0, dict(costs), {c: 0 for c in CANDIDATES}

    def now(self) -> float:
        return self.t


_CLOCKS: dict[int, Clock] = {}  # id(comm) -> clock; fake ranks are threads of one process
_LOCK = threading.Lock()


def _algorithm(name: str):
    def run(comm, buf, op):
        native_allreduce(comm, buf, op)
        clock = _CLOCKS[id(comm)]
        clock.t += clock.costs[name]
        clock.calls[name] += 1
    return run


@pytest.fixture(autouse=True)
def _test_algorithms(monkeypatch):
    monkeypatch.setenv("HPCDL_TUNE", "on")
    for name in CANDIDATES:
        registry.register_allreduce(name, _algorithm(name))
    yield
    for name in CANDIDATES:
        registry.ALLREDUCE.pop(name, None)
    registry.invalidate_plans()


def _setup(comm, costs: dict[str, float], use_cache: bool = False) -> tuple[online.Tuner, Clock]:
    if comm.size == 1:
        pytest.skip("one rank: auto has nothing to tune (test_one_rank_has_nothing_to_tune)")
    clock = Clock(costs)
    with _LOCK:
        _CLOCKS[id(comm)] = clock
    return online.install(comm, clock=clock.now, candidates=CANDIDATES, use_cache=use_cache), clock


def _split_costs(rank: int) -> dict[str, float]:
    """Alone, rank 0 would pick t_b and every other rank t_a; together (the slowest
    rank's time per candidate) t_c wins: 2.0 against 4.0 and 4.0."""
    return {"t_a": 4.0 if rank == 0 else 1.0, "t_b": 4.0 if rank == 1 else 1.0, "t_c": 2.0}


def _calls(comm, count: int, seed: int, failures: Failures) -> None:
    """``count`` auto allreduces of random data, each checked against NumPy."""
    for i in range(count):
        xs = all_inputs(seed + i, comm.size, (N,), "float64")
        x = xs[comm.rank].copy()
        hpcdl.allreduce(x, comm=comm)
        ref = reduce_reference(xs, "sum")
        failures.check(f"call {i}", lambda: close(x, ref, xs, "sum"))


def _winner(tuner: online.Tuner) -> dict:
    (entry,) = tuner.report().values()
    return entry


@pytest.mark.parametrize("group", group_params((2, 3, 4)))
def test_ranks_agree_on_the_winner_their_own_timings_would_not_pick(group):
    def body(comm):
        tuner, clock = _setup(comm, _split_costs(comm.rank))
        failures = Failures()
        trials = 3 * online.rounds(N * 8)
        _calls(comm, trials + 20, 7, failures)
        entry = _winner(tuner)
        failures.expect("winner", entry["history"] == ["t_c"], f"{entry['history']}")
        failures.expect("trials", entry["trial_calls"] == trials
                        and clock.calls["t_c"] == trials // 3 + 20, f"{entry} {clock.calls}")
        agreed = comm.allgather_object((entry["algorithm"], clock.calls))
        failures.expect("agreement", all(a == agreed[0] for a in agreed), f"{agreed}")
        failures.assert_none()
    on_group(group, body)


@pytest.mark.mpi_pass
def test_one_rank_has_nothing_to_tune(ctx):
    """At one rank auto is the table's choice; at more, a tuner runs the candidates."""
    comm = ctx.comm.split(0, ctx.rank)
    registry.invalidate_plans()
    x = np.ones(N)
    hpcdl.allreduce(x, comm=comm)
    made = online.existing(comm) is not None
    assert made == (comm.size > 1) and np.all(x == comm.size)


@pytest.mark.parametrize("group", group_params((2, 3)))
def test_noise_does_not_make_auto_flap(group):
    """+-40% noise on every call, different on every rank: one decision, no re-trial,
    and after the decision every call runs the winner."""
    def body(comm):
        tuner, clock = _setup(comm, {"t_a": 1.0, "t_b": 1.5, "t_c": 3.0})
        rng = np.random.default_rng(comm.rank)
        base = dict(clock.costs)
        failures = Failures()
        x = np.ones(N)
        trials = 3 * online.rounds(N * 8)
        for i in range(trials + 64 + 128 + 256 + 8):
            for c in CANDIDATES:
                clock.costs[c] = base[c] * rng.uniform(0.6, 1.4)
            x[:] = comm.rank + 1
            hpcdl.allreduce(x, comm=comm)
            if not np.all(x == comm.size * (comm.size + 1) // 2):
                failures.expect(f"call {i}", False, "wrong sum")
        entry = _winner(tuner)
        failures.expect("one decision", entry["history"] == ["t_a"] and entry["retrials"] == 0
                        and entry["settled"], f"{entry}")
        failures.expect("only the winner after the trials", clock.calls["t_b"] == trials // 3
                        and clock.calls["t_c"] == trials // 3, f"{clock.calls}")
        failures.assert_none()
    on_group(group, body, timeout=120)


@pytest.mark.parametrize("group", group_params((2, 4)))
def test_drift_retrials_a_bounded_number_of_times(group):
    """The winner turning 5x slower starts new trials at the next check (64 calls after
    a decision at the latest); re-trials per class are bounded, so a machine whose
    speed keeps swinging cannot make auto flap."""
    base = {"t_a": 1.0, "t_b": 1.5, "t_c": 3.0}

    def body(comm):
        tuner, clock = _setup(comm, base)
        x = np.ones(N)
        failures = Failures()

        def until_decisions(count: int, limit: int) -> int:
            # the history is agreed, so every rank stops after the same call
            for calls in range(limit):
                if tuner.report() and len(_winner(tuner)["history"]) == count:
                    return calls
                x[:] = 1
                hpcdl.allreduce(x, comm=comm)
            return limit

        trials = 3 * online.rounds(N * 8)
        until_decisions(1, trials + 1)
        for slow, decisions in (("t_a", 2), ("t_b", 3)):
            clock.costs = dict(base, **{slow: 5 * base[slow]})
            took = until_decisions(decisions, 1000)
            failures.expect(f"re-trial after {slow} slowed", took <= online.FIRST_CHECK + trials,
                            f"{took} calls, {_winner(tuner)}")
        clock.costs = dict(base, t_a=5.0)  # the winner slow again: no third re-trial
        until_decisions(4, 64 + 128 + 256 + 512 + trials)
        entry = _winner(tuner)
        failures.expect("history", entry["history"] == ["t_a", "t_b", "t_a"], f"{entry}")
        failures.expect("bounded", entry["retrials"] == online.MAX_RETRIALS, f"{entry}")
        failures.expect("result", bool(np.all(x == comm.size)))
        failures.assert_none()
    on_group(group, body, timeout=120)


@pytest.mark.parametrize("group", group_params((2, 3)))
def test_trials_under_load_that_goes_away_are_run_again(group):
    """Trials under load (every time 10x, t_b ahead); the load goes and t_a is the
    fastest: the winner now runs far faster than it won with, which is a drift too."""
    def body(comm):
        tuner, clock = _setup(comm, {"t_a": 12.0, "t_b": 10.0, "t_c": 30.0})
        x = np.ones(N)
        trials = 3 * online.rounds(N * 8)
        for _ in range(trials):
            hpcdl.allreduce(x, comm=comm)
        first = _winner(tuner)["history"]
        clock.costs = {"t_a": 1.0, "t_b": 1.5, "t_c": 3.0}
        for _ in range(online.FIRST_CHECK + trials + 1):
            x[:] = 1
            hpcdl.allreduce(x, comm=comm)
        entry = _winner(tuner)
        failures = Failures()
        failures.expect("history", (first, entry["history"]) == (["t_b"], ["t_b", "t_a"]),
                        f"{first} {entry}")
        failures.expect("result", bool(np.all(x == comm.size)))
        failures.assert_none()
    on_group(group, body)


@pytest.mark.parametrize("group", group_params((2, 3)))
def test_the_next_job_reuses_rank_0s_cache(group, tmp_path, monkeypatch):
    """A second tuner (the next job) takes the cached winner without trials. Under
    mpiexec every rank has its own cache folder, and the other ranks' files name another
    winner: rank 0's is the one all follow."""
    own_folders = group == "mpi"
    if not own_folders:  # fake ranks are threads of one process: one environment
        monkeypatch.setenv("HPCDL_CACHE_DIR", str(tmp_path / "shared"))

    def body(comm):
        if own_folders:
            monkeypatch.setenv("HPCDL_CACHE_DIR", str(tmp_path / f"rank{comm.rank}"))
        failures = Failures()
        first, _ = _setup(comm, _split_costs(comm.rank), use_cache=True)
        _calls(comm, 3 * online.rounds(N * 8) + 1, 11, failures)
        (key,) = first.report()
        mine = cache_file(fingerprint(online.library_version(comm)))
        if own_folders and comm.rank != 0:
            save_choice(mine, {}, key, {"algorithm": "t_a", "seconds": 1.0})
        second, clock = _setup(comm, _split_costs(comm.rank), use_cache=True)
        _calls(comm, 10, 13, failures)
        entry = _winner(second)
        failures.expect("second job", (entry["source"], entry["algorithm"], entry["trial_calls"])
                        == ("cache", "t_c", 0), f"{entry}")
        failures.expect("second job ran", clock.calls == {"t_a": 0, "t_b": 0, "t_c": 10},
                        f"{clock.calls}")
        if comm.rank == 0:
            saved = load_choices(mine).get(key, {})
            failures.expect("rank 0's file", saved.get("algorithm") == "t_c", f"{mine}: {saved}")
        failures.assert_none()
    on_group(group, body)


def test_off_switch_and_bad_values(ctx, monkeypatch):
    """HPCDL_TUNE=off: auto is the table's choice and no tuner is made; a named table
    (HPCDL_TUNING_FILE) means off unless HPCDL_TUNE says on; a bad value is an error."""
    comm = ctx.comm.split(0, ctx.rank)
    f64 = np.dtype(np.float64)
    for env, table, expected in (("off", None, "off"), ("", "/x.json", "off"),
                                 ("on", "/x.json", "on"), ("verbose", None, "verbose")):
        monkeypatch.setenv("HPCDL_TUNE", env)
        if table:
            monkeypatch.setenv("HPCDL_TUNING_FILE", table)
        else:
            monkeypatch.delenv("HPCDL_TUNING_FILE", raising=False)
        assert online.mode() == expected, (env, table)
    monkeypatch.delenv("HPCDL_TUNING_FILE", raising=False)
    monkeypatch.setenv("HPCDL_TUNE", "off")
    registry.invalidate_plans()
    x = np.ones(N)
    for _ in range(40):
        x[:] = 1
        hpcdl.allreduce(x, comm=comm)
        hpcdl.allreduce(x, comm=comm, async_op=True).wait()
        assert np.all(x == comm.size ** 2)
    assert online.existing(comm) is None
    assert registry.resolve_allreduce("auto", comm, 8000, f64)[0] != "auto"
    monkeypatch.setenv("HPCDL_TUNE", "sometimes")
    with pytest.raises(InvalidArgumentError, match="HPCDL_TUNE='sometimes'"):
        online.mode()


@pytest.mark.mpi(min_size=2)
def test_bad_candidates_name_rank_0_and_the_names(ctx, monkeypatch):
    comm = ctx.comm.split(0, ctx.rank)
    monkeypatch.setenv("HPCDL_TUNE_CANDIDATES", "native,warp")
    with pytest.raises(InvalidArgumentError, match=r"rank \d+.*unknown \['warp'\]"):
        online.install(comm)


def test_cache_folder_and_fingerprint(monkeypatch, tmp_path):
    """HPCDL_CACHE_DIR wins over XDG_CACHE_HOME; host digits are masked (node017 and
    node042 share a file); the MPI text's trailing NUL does not reach the file."""
    from hpcdl.collectives import tune_cache

    monkeypatch.setenv("HPCDL_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert tune_cache.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("HPCDL_CACHE_DIR")
    assert tune_cache.cache_dir() == tmp_path / "x" / "hpcdl"
    prints = []
    for host in ("node017", "node042", "login1"):
        monkeypatch.setattr(tune_cache.socket, "gethostname", lambda host=host: host)
        prints.append(fingerprint("Open MPI v5.0.11, ident\x00\nmore"))
    assert prints[0] == prints[1] != prints[2]
    assert prints[0]["host"] == "node#" and prints[0]["mpi"] == "Open MPI v5.0.11, ident"
    assert cache_file(prints[0]) == cache_file(prints[1]) != cache_file(prints[2])
