"""The cost model across nodes: alpha and beta per kind of link, and the check against runs
measured on several nodes (``hpcdl model links``; docs/cluster.md).

``hpcdl model measure`` run across nodes records a ping-pong per kind of link
(``links.shm``: two ranks of one node, ``links.net``: ranks of two nodes). Each kind is
fitted on its own to ``T(n) = alpha + n beta`` (non-negative least squares on the
relative error, as the single-node transport). The multi-node allreduce timings are
then predicted by :func:`hpcdl.model.costs.cluster_cost` with

* inside a node: each algorithm's own parameters fitted on the single-node runs of
  the same file (its Python cost per message and its copies included), and
* across nodes: the fitted network alpha plus that algorithm's software cost per
  message, and the network's beta per byte (shared by the ranks of a node that cross
  at once).

All emulated nodes share one machine's cores: a run of ``p`` ranks on ``c`` cores
stretches the per-byte terms (copies, reductions) by ``s = p / c`` as the
single-node fit does (hpcdl/tuning/fit.py), but not the network's own beta, which is
the shaped link's. The projection to 4,096 ranks is ``hpcdl model`` with the
network fitted here (``--alpha``/``--bandwidth``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..tuning.costs import Params, cluster_cost
from ..tuning.data import load_measurements
from ..tuning.fit import Fit, fit, nnls
from ..tuning.project import Network, project

__all__ = ["fit_links", "compare_cluster", "main"]

KINDS = ("shm", "net")


def fit_links(data: dict[str, Any]) -> dict[str, Params]:
    """``{"shm": Params, "net": Params}`` (the kinds present) from every run's ``links``."""
    out = {}
    for kind in KINDS:
        rows = [(n, t) for run in data["runs"].values()
                for n, t in run.get("links", {}).get(kind, []) if t > 0]
        if not rows:
            continue
        n = np.array([r[0] for r in rows], float)
        t = np.array([r[1] for r in rows], float)
        x = nnls(np.stack([1 / t, n / t], axis=1), np.ones_like(t))
        out[kind] = Params(float(x[0]), float(x[1]), 0.0)
    return out


def _stretched(prm: Params, s: float) -> Params:
    """``prm`` for a rank that gets 1/s of a core (per-byte terms s times slower)."""
    scale = lambda v: None if v is None else v * s  # noqa: E731
    return Params(prm.alpha + (s - 1) * prm.alpha_oversub, prm.beta * s, prm.gamma * s,
                  scale(prm.beta_cached), scale(prm.gamma_cached), prm.cache_bytes)


def _layout_params(f: Fit, name: str, net: Params, s: float) -> tuple[Params, Params]:
    own = _stretched(f.algorithms["ring" if name == "hierarchical" else name], s)
    software = max(0.0, f.algorithms["ring" if name == "hierarchical" else name].alpha
                   - f.transport.alpha)
    return own, Params(net.alpha + software, net.beta, own.gamma_at(float("inf")))


def compare_cluster(data: dict[str, Any], f: Fit, links: dict[str, Params]
                    ) -> list[dict[str, Any]]:
    """One row per multi-node run, algorithm and size: measured, predicted, error."""
    if "net" not in links:
        raise ValueError("no network ping-pong in the measurements: run 'hpcdl model measure' "
                         "across nodes (docs/cluster.md)")
    rows = []
    for key, run in sorted(data["runs"].items(), key=lambda kv: kv[0]):
        nodes = int(run.get("nodes") or 1)
        if nodes == 1:
            continue
        p, per_node = int(run["ranks"]), int(run["ranks_per_node"])
        s = max(1.0, p / max(1, int(run.get("cores") or 1)))
        for name, timings in run.get("allreduce", {}).items():
            base = "ring" if name == "hierarchical" else name
            if base not in f.algorithms:
                continue
            intra, inter = _layout_params(f, name, links["net"], s)
            for n, t in timings:
                pred = cluster_cost(name, p, n, per_node, intra, inter)
                rows.append({"run": key, "layout": f"{nodes}x{per_node}", "algorithm": name,
                             "bytes": int(n), "measured_s": t, "predicted_s": pred,
                             "error": pred / t - 1})
    return rows


def _human(n: float) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n:g} B"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hpcdl model links", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="measurements with runs across nodes")
    p.add_argument("--min-bytes", type=int, default=1 << 16, help="judge from here up")
    p.add_argument("--ranks-per-node", type=int, default=8, help="for the projection")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        data = load_measurements(args.data)
        links = fit_links(data)
        f = fit(data, min_bytes=args.min_bytes)
        rows = compare_cluster(data, f, links)
    except (ValueError, OSError, KeyError) as exc:
        print(f"hpcdl model links: {exc}", file=sys.stderr)
        return 2
    print("link fit (ping-pong, T = alpha + n beta):")
    for kind, prm in links.items():
        print(f"  {kind:>4}: alpha {prm.alpha * 1e6:8.2f} us, beta {prm.beta * 1e9:8.4f} ns/B "
              f"({1 / prm.beta / 1e9 if prm.beta else float('inf'):.3f} GB/s)")
    print(f"\nmodel vs measured across nodes (error = predicted / measured - 1)")
    print(f"{'layout':>6} {'algorithm':>12} {'size':>10} {'measured(us)':>13} "
          f"{'model(us)':>11} {'error':>8}")
    judged = [r for r in rows if r["bytes"] >= args.min_bytes]
    for r in judged:
        mark = "" if abs(r["error"]) <= 0.2 else "  >20%"
        print(f"{r['layout']:>6} {r['algorithm']:>12} {_human(r['bytes']):>10} "
              f"{r['measured_s'] * 1e6:13.1f} {r['predicted_s'] * 1e6:11.1f} "
              f"{100 * r['error']:7.1f}%{mark}")
    within = sum(abs(r["error"]) <= 0.2 for r in judged)
    print(f"{within} of {len(judged)} rows from {_human(args.min_bytes)} up within 20%")
    for key in sorted({(r["layout"], r["algorithm"]) for r in judged}):
        sel = [r for r in judged if (r["layout"], r["algorithm"]) == key]
        ok = sum(abs(r["error"]) <= 0.2 for r in sel)
        print(f"  {key[0]:>4} {key[1]:>12}: {ok}/{len(sel)} within 20%, worst "
              f"{100 * max(abs(r['error']) for r in sel):.0f}%")
    net = links["net"]
    network = Network("measured net", net.alpha, 1 / net.beta)
    sizes = [1 << 16, 1 << 20, 16 << 20, 256 << 20]
    table = project(f, network, args.ranks_per_node, [64, 512, 4096], sizes)
    print(f"\nprojection with the network fit ({network.describe()}), "
          f"{args.ranks_per_node} ranks per node:")
    for ranks, by_size in table.items():
        for n, by_alg in by_size.items():
            best = min(by_alg, key=by_alg.get)
            print(f"  {ranks:>5} ranks {_human(n):>8}: " + "  ".join(
                f"{a} {t * 1e3:.2f} ms" for a, t in by_alg.items()) + f"  -> {best}")
    return 0
