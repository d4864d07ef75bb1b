"""The cost model (hpcdl.model): formulas, fit, projection, the ``hpcdl model`` command.

All on synthetic timings made from known parameters, so the fit can be checked
exactly; the measured fit and its errors are in docs/observability.md.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcdl.model import FLAT, Params, cluster_cost, coefficients, compare, cost, fit, project
from hpcdl.model.cli import main as model_main
from hpcdl.model.fit import nnls, oversubscription
from hpcdl.model.project import PRESETS, parse_quantity

TRUE = {"native": Params(3e-6, 2.0e-10, 1.5e-10), "chunked": Params(12e-6, 1.2e-10, 1.5e-10),
        "ring": Params(25e-6, 2.5e-10, 1.5e-10), "tree": Params(6e-6, 1.0e-10, 1.5e-10)}
SIZES = [4 ** k for k in range(1, 14)]


def synthetic(noise: float = 0.0, cores: int = 2, seed: int = 0,
              oversub_alpha: float = 0.0) -> dict:
    rng = np.random.default_rng(seed)
    runs = {}
    for p in (2, 3, 4):
        s = max(1.0, p / cores)
        allreduce = {}
        for name, prm in TRUE.items():
            rows = []
            for n in SIZES:
                a, b, c = coefficients(name, p, n)
                t = a * (prm.alpha + (s - 1) * oversub_alpha) + s * (b * prm.beta
                                                                    + c * prm.gamma)
                rows.append([n, t * (1 + noise * rng.standard_normal())])
            allreduce[name] = rows
        runs[str(p)] = {"ranks": p, "ranks_per_node": p, "cores": cores, "mpi": "synthetic",
                        "pingpong": [[n, 1e-6 + n * 1e-10] for n in SIZES[:10]],
                        "reduce": [[n, n * 1.5e-10] for n in SIZES[9:]], "allreduce": allreduce}
    return {"version": 1, "source": "synthetic", "runs": runs}


def test_coefficients_follow_the_textbook_formulas():
    n = 1 << 20
    assert coefficients("ring", 1, n) == (0, 0, 0)
    assert coefficients("ring", 4, n) == (6, 2 * 3 / 4 * n, 3 / 4 * n)
    assert coefficients("tree", 4, n) == (2, 2 * n, 2 * n)
    # 3 ranks: one folds into a partner (2 extra messages of the whole buffer, 1 extra reduction)
    assert coefficients("tree", 3, n) == (3, 3 * n, 2 * n)
    assert coefficients("native", 8, n) == (6, 2 * 7 / 8 * n, 7 / 8 * n)
    assert coefficients("chunked", 8, 4 * n)[0] == 4 * 6
    assert coefficients("ring", 2, 8 * n)[0] == 2 * 4  # 4 MiB blocks go as four 1 MiB chunks
    with pytest.raises(ValueError, match="hierarchical"):
        coefficients("hierarchical", 4, n)
    with pytest.raises(ValueError, match="p >= 1"):
        coefficients("ring", 0, n)


def test_nnls_is_non_negative_and_exact_when_it_can_be():
    a = np.array([[1.0, 1.0], [1.0, 2.0], [1.0, 3.0]])
    assert np.allclose(nnls(a, a @ np.array([2.0, 0.5])), [2.0, 0.5])
    x = nnls(a, a @ np.array([-1.0, 1.0]))  # the unconstrained answer is negative
    assert np.all(x >= 0)


def test_fit_finds_the_cache_split():
    """Bandwidth 4x slower above 4 MiB: the fit keeps two betas and splits between 4 and 16 MiB."""
    data = synthetic()
    for run in data["runs"].values():
        for name, rows in run["allreduce"].items():
            prm = Params(TRUE[name].alpha, TRUE[name].beta * 4, TRUE[name].gamma,
                         beta_cached=TRUE[name].beta, gamma_cached=TRUE[name].gamma,
                         cache_bytes=6 << 20)
            p, s = run["ranks"], oversubscription(run)
            for row in rows:
                a, b, c = coefficients(name, p, row[0])
                row[1] = a * prm.alpha + s * (b * prm.beta_at(row[0]) + c * prm.gamma_at(row[0]))
    f = fit(data)
    for name in TRUE:
        got = f.algorithms[name]
        assert 4 << 20 < got.cache_bytes < 16 << 20, name
        assert got.beta_cached == pytest.approx(TRUE[name].beta, rel=1e-3), name
        assert got.beta == pytest.approx(4 * TRUE[name].beta, rel=1e-3), name
    assert max(abs(r["error"]) for r in compare(data, f)) < 1e-6


@pytest.mark.parametrize("cores", [1, 2, 8])
def test_fit_recovers_known_parameters(cores):
    f = fit(synthetic(cores=cores), min_bytes=1 << 16)
    assert f.transport.alpha == pytest.approx(1e-6, rel=1e-6)
    assert f.transport.beta == pytest.approx(1e-10, rel=1e-6)
    for name, prm in TRUE.items():
        assert f.algorithms[name].beta == pytest.approx(prm.beta, rel=1e-6), name
        assert f.algorithms[name].gamma == pytest.approx(prm.gamma, rel=1e-6), name
        assert f.algorithms[name].alpha == pytest.approx(prm.alpha, rel=1e-4), name
    assert all(abs(r["error"]) < 1e-6 for r in compare(synthetic(cores=cores), f))


def test_fit_recovers_the_oversubscription_latency():
    # 1 core: s = 2, 3, 4 at 2, 3, 4 ranks; each message waits 20 us per extra rank per core.
    data = synthetic(cores=1, oversub_alpha=20e-6)
    f = fit(data, min_bytes=1)
    for name, prm in TRUE.items():
        got = f.algorithms[name]
        assert got.alpha_oversub == pytest.approx(20e-6, rel=1e-4), name
        assert got.alpha == pytest.approx(prm.alpha, rel=1e-3), name
    assert max(abs(r["error"]) for r in compare(data, f)) < 1e-6
    # Without oversubscription the column is all zeros and the term stays 0.
    assert all(p.alpha_oversub == 0 for p in fit(synthetic(cores=8)).algorithms.values())


def test_fit_with_noise_stays_within_the_noise():
    data = synthetic(noise=0.05, seed=3)
    f = fit(data, min_bytes=1 << 16)
    judged = [r for r in compare(data, f) if r["bytes"] >= 1 << 16]
    assert max(abs(r["error"]) for r in judged) < 0.2
    assert f.algorithms["ring"].beta == pytest.approx(TRUE["ring"].beta, rel=0.1)


def test_oversubscription_counts_ranks_per_core():
    assert oversubscription({"ranks": 4, "ranks_per_node": 4, "cores": 2}) == 2
    assert oversubscription({"ranks": 4, "ranks_per_node": 2, "cores": 8}) == 1


def test_projection_is_monotone_where_theory_says_so():
    f = fit(synthetic())
    ranks = [8, 16, 64, 256, 1024, 4096]
    sizes = [4096, 1 << 16, 1 << 20, 1 << 24, 1 << 28]
    proj = project(f, PRESETS["hdr-ib"], 8, ranks, sizes)
    for name in ("native", "chunked", "ring", "tree", "hierarchical"):
        for p in ranks:  # more bytes never take less time
            times = [proj[p][n][name] for n in sizes]
            assert times == sorted(times), (name, p)
        for n in sizes:  # once across nodes, more ranks never take less time
            # (8 ranks are one node: its shared memory may be slower than the network)
            times = [proj[p][n][name] for p in ranks if p > 8]
            assert all(b >= a * 0.999 for a, b in zip(times, times[1:])), (name, n)
    # ring's bytes approach 2 n while its messages grow as 2 (p - 1): latency-bound at scale
    big = 1 << 28
    assert coefficients("ring", 4096, big)[1] < 2 * big
    assert proj[4096][big]["ring"] > 2 * proj[1024][big]["ring"]  # 4x the messages
    # many nodes, mid-size messages: hierarchical beats a flat ring (fewer network steps)
    assert proj[4096][1 << 20]["hierarchical"] < proj[4096][1 << 20]["ring"]
    # a faster network is never slower
    fast = project(f, PRESETS["ndr-ib"], 8, ranks, sizes)
    assert all(fast[p][n][a] <= proj[p][n][a] for p in ranks for n in sizes for a in proj[p][n])


def test_cluster_cost_on_one_node_is_the_flat_cost():
    prm = TRUE["ring"]
    for name in FLAT:
        assert cluster_cost(name, 8, 1 << 20, 8, prm, Params(1, 1, 1)) == \
            pytest.approx(cost(name, 8, 1 << 20, prm))


@pytest.mark.parametrize("text,kind,value", [("1.5us", "time", 1.5e-6), ("2ms", "time", 2e-3),
                                             ("25GB/s", "rate", 25e9), ("200Gb/s", "rate", 25e9),
                                             ("3e-6", "time", 3e-6)])
def test_parse_quantity(text, kind, value):
    assert parse_quantity(text, kind) == pytest.approx(value)


@pytest.mark.parametrize("text,kind", [("25GB/s", "time"), ("1us", "rate"), ("-1us", "time"),
                                       ("fast", "time")])
def test_parse_quantity_rejects_nonsense(text, kind):
    with pytest.raises(ValueError):
        parse_quantity(text, kind)


def test_model_command_prints_fit_errors_projection_and_writes_table(tmp_path, capsys):
    data = tmp_path / "m.json"
    data.write_text(json.dumps(synthetic()))
    table = tmp_path / "tuning.json"
    table.write_text(json.dumps({"version": 1, "source": "measured", "rules": {
        "float": {"8": [[None, "tree"]]}}}))
    plot = tmp_path / "proj.png"
    rc = model_main(["--data", str(data), "--alpha", "2us", "--bandwidth", "100Gb/s",
                     "--ranks", "8,64,512", "--plot", str(plot), "--write-table", str(table),
                     "--json", str(tmp_path / "out.json")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "largest error from 64 KiB up: 0.0%" in out
    assert "custom: alpha 2 us, 12.5 GB/s per node" in out
    assert "crossover table" in out and "  512 ranks:" in out
    assert plot.stat().st_size > 10_000
    rules = json.loads(table.read_text())["rules"]["float"]
    assert rules["8"] == [[None, "tree"]]           # a measured rank count is kept
    assert set(rules) == {"8", "64", "512"}
    from hpcdl.collectives.select import validate_table

    validate_table(json.loads(table.read_text()), "written table")


def test_model_command_reports_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert model_main(["--data", str(bad)]) == 2
    assert "non-empty 'runs'" in capsys.readouterr().err


def test_shipped_measurements_load_and_fit():
    """The measurements shipped with hpcdl load, and every algorithm gets a finite,
    non-negative fit (how close it comes is measured in docs/observability.md)."""
    from hpcdl.model.measure import DEFAULT_MEASUREMENTS, load_measurements

    f = fit(load_measurements(DEFAULT_MEASUREMENTS))
    assert set(f.algorithms) == set(FLAT)
    for prm in f.algorithms.values():
        values = [prm.alpha, prm.beta, prm.gamma]
        assert all(math.isfinite(v) and v >= 0 for v in values)


def test_auto_uses_the_model_for_rank_counts_the_table_lacks(ctx, tmp_path, monkeypatch):
    """A table with rules for 2 and 4 ranks only: at 3 ranks (one node) auto follows the
    model fitted to the measurements; a listed rank count keeps its measured rules."""
    import types

    import hpcdl.model.auto as auto
    from hpcdl.collectives import select

    data = tmp_path / "m.json"
    data.write_text(json.dumps(synthetic()))
    table = tmp_path / "t.json"
    table.write_text(json.dumps({"version": 1, "source": "test", "rules": {"float": {
        "2": [[None, "ring"]], "4": [[None, "ring"]]}}}))
    monkeypatch.setenv("HPCDL_TUNING_FILE", str(table))
    monkeypatch.setattr("hpcdl.tuning.data.user_measurements_path", lambda: data)
    auto._fitted.cache_clear()
    select.reload()
    try:
        expected = auto.model_rules(3)
        assert expected and expected != [[None, "ring"]]
        three, four = types.SimpleNamespace(size=3), types.SimpleNamespace(size=4)
        for n in (64, 1 << 16, 1 << 24):
            want = next(a for lim, a in expected if lim is None or lim >= n)
            got = select.choose(three, n, np.dtype(np.float32))
            assert got == (want if ctx.num_nodes == 1 else "ring"), n
            assert select.choose(four, n, np.dtype(np.float32)) == "ring"
    finally:
        monkeypatch.undo()
        auto._fitted.cache_clear()
        select.reload()


@pytest.mark.spawns
def test_measure_command_inside_a_job_writes_measurements(tmp_path):
    """``hpcdl model measure`` run as the ranks of a job measures there (runtime.under_launcher)."""
    out = tmp_path / "measurements.json"
    cmd = [str(Path(sys.executable).parent / "hpcdl"), "launch", "-n", "2", "--", "python", "-m",
           "hpcdl.model.measure_cli", "--sizes", "4,4096", "--rounds", "2", "--budget", "0.002",
           "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for k in [k for k in env if k.startswith(("OMPI_", "PMIX_", "PRTE_"))]:
        env.pop(k)  # a clean launch even when pytest itself runs under mpiexec
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    run = json.loads(out.read_text())["runs"]["2"]
    assert "n=2" in done.stdout and run["ranks"] == 2
    for name in FLAT:   # every round of every (algorithm, size) kept; the best one fitted
        rounds = dict((n, ts) for n, ts in run["allreduce_rounds"][name])
        assert sorted(rounds) == [4, 4096] and all(len(ts) == 2 for ts in rounds.values())
        assert run["allreduce"][name] == [[n, min(rounds[n])] for n in (4, 4096)]
        assert all(t > 0 for ts in rounds.values() for t in ts)


def test_measure_command_refuses_zero_rounds(capsys):
    from hpcdl.model.measure_cli import main as measure_main

    with pytest.raises(SystemExit) as e:
        measure_main(["--rounds", "0"])
    assert e.value.code == 2 and "--rounds 0" in capsys.readouterr().err


def test_compare_reports_the_measurement_spread_and_the_command_counts_rows(tmp_path, capsys):
    """With every round kept, each row carries slowest / fastest - 1 of its rounds, and
    ``hpcdl model`` counts the rows within 20% and within that spread."""
    data = synthetic()
    run = data["runs"]["2"]
    run["allreduce_rounds"] = {name: [[n, [t, t * 1.5]] for n, t in rows]
                               for name, rows in run["allreduce"].items()}
    rows = compare(data, fit(data))
    two = [r for r in rows if r["ranks"] == 2]
    assert two and all(r["spread"] == pytest.approx(0.5) for r in two)
    assert all(r["spread"] is None for r in rows if r["ranks"] != 2)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    assert model_main(["--data", str(path), "--ranks", "8"]) == 0
    out = capsys.readouterr().out
    judged = sum(r["bytes"] >= 1 << 16 for r in rows)
    assert f"{judged} of {judged} rows within 20%" in out
    two_judged = sum(r["bytes"] >= 1 << 16 for r in two)   # only 2 ranks have rounds
    assert f"{two_judged} of {judged} judged rows have an error within it" in out
    assert "the runs at 3, 4 ranks had more ranks than the 2 cores" in out
