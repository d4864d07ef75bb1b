"""The cost model across nodes (hpcdl/model/links.py): alpha/beta per kind of link, the
multi-node predictions, and ``hpcdl model links``; on synthetic timings made from known
parameters, so a wrong fit or formula shows. The measurement on the emulated cluster:
tests/test_cluster.py."""

from __future__ import annotations

import json

import pytest

from hpcdl.tuning.costs import Params, cluster_cost, coefficients
from hpcdl.tuning.fit import fit   # (hpcdl.model.fit is also a module name there)
from hpcdl.model.cli import main as model_main
from hpcdl.model.links import compare_cluster, fit_links
from hpcdl.model.measure import run_key

pytestmark = pytest.mark.fake_ranks   # pure functions: once, serially
TRUE = {"native": Params(3e-6, 2.0e-10, 1.5e-10), "ring": Params(25e-6, 2.5e-10, 1.5e-10),
        "tree": Params(6e-6, 1.0e-10, 1.5e-10)}
SIZES = [4 ** k for k in range(5, 13)]
SHM, NET = Params(1e-6, 1e-10, 0.0), Params(40e-6, 8.4e-9, 0.0)   # ~1 Gbit/s network
CORES = 64   # no oversubscription: the fitted parameters are the true ones


def synthetic() -> dict:
    runs = {}
    for p in (2, 3, 4):
        allreduce = {name: [[n, prm.time(*coefficients(name, p, n))] for n in SIZES]
                     for name, prm in TRUE.items()}
        runs[str(p)] = {"ranks": p, "ranks_per_node": p, "nodes": 1, "cores": CORES,
                        "pingpong": [[n, SHM.alpha + n * SHM.beta] for n in SIZES],
                        "reduce": [[n, n * 1.5e-10] for n in SIZES], "allreduce": allreduce}
    for nodes, per in ((2, 2), (4, 1)):
        allreduce = {}
        for name in (*TRUE, "hierarchical"):
            own = TRUE["ring" if name == "hierarchical" else name]
            inter = Params(NET.alpha + own.alpha - SHM.alpha, NET.beta, own.gamma)
            allreduce[name] = [[n, cluster_cost(name, 4, n, per, own, inter)] for n in SIZES]
        links = {"net": [[n, NET.alpha + n * NET.beta] for n in SIZES]}
        if per > 1:
            links["shm"] = [[n, SHM.alpha + n * SHM.beta] for n in SIZES]
        record = {"ranks": 4, "ranks_per_node": per, "nodes": nodes, "cores": CORES,
                  "pingpong": links["net"], "reduce": [[n, n * 1.5e-10] for n in SIZES],
                  "allreduce": allreduce, "links": links}
        runs[run_key(record)] = record
    return {"version": 1, "source": "synthetic", "runs": runs}


def test_runs_across_nodes_get_their_own_key():
    assert run_key({"ranks": 4, "nodes": 1, "ranks_per_node": 4}) == "4"
    assert run_key({"ranks": 4, "nodes": 2, "ranks_per_node": 2}) == "4@2x2"
    assert set(synthetic()["runs"]) == {"2", "3", "4", "4@2x2", "4@4x1"}


def test_each_kind_of_link_is_fitted_on_its_own():
    links = fit_links(synthetic())
    for kind, true in (("shm", SHM), ("net", NET)):
        assert links[kind].alpha == pytest.approx(true.alpha, rel=1e-6), kind
        assert links[kind].beta == pytest.approx(true.beta, rel=1e-6), kind


def test_runs_across_nodes_leave_the_single_node_fit_alone():
    data = synthetic()
    alone = {k: v for k, v in data["runs"].items() if "@" not in k}
    with_them, without = fit(data), fit({**data, "runs": alone})
    assert with_them.algorithms == without.algorithms
    assert with_them.transport == without.transport


def test_predictions_across_nodes_match_timings_made_by_the_model():
    data = synthetic()
    rows = compare_cluster(data, fit(data), fit_links(data))
    assert {(r["layout"], r["algorithm"]) for r in rows} == {
        (lay, a) for lay in ("2x2", "4x1") for a in (*TRUE, "hierarchical")}
    worst = max(abs(r["error"]) for r in rows)
    assert worst < 1e-3, [r for r in rows if abs(r["error"]) >= 1e-3][:3]


def test_a_wrong_network_shows_as_error():
    # the same timings judged with a network twice as fast must be off by a lot
    data = synthetic()
    links = fit_links(data)
    links["net"] = Params(links["net"].alpha, links["net"].beta / 2, 0.0)
    rows = [r for r in compare_cluster(data, fit(data), links) if r["bytes"] >= 1 << 20]
    assert all(r["error"] < -0.2 for r in rows if r["algorithm"] != "hierarchical"
               or r["layout"] == "4x1"), rows[:3]


def test_links_command_prints_fit_comparison_and_projection(tmp_path, capsys):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(synthetic()))
    assert model_main(["links", "--data", str(path)]) == 0
    out = capsys.readouterr().out
    assert "net: alpha    40.00 us, beta   8.4000 ns/B" in out, out
    assert "40 of 40 rows from 64 KiB up within 20%" in out, out
    assert " 4096 ranks " in out and "-> " in out


def test_links_command_without_network_data_says_so(tmp_path, capsys):
    data = synthetic()
    data["runs"] = {k: v for k, v in data["runs"].items() if "@" not in k}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    assert model_main(["links", "--data", str(path)]) == 2
    assert "no network ping-pong" in capsys.readouterr().err
