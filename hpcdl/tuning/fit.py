"""Fit the cost model's parameters to measurements, and compare the fit with them.

* ``gamma`` (s per byte reduced) from the local reduction timings, 1 MiB and up;
* the transport's ``alpha`` and ``beta`` from the ping-pong;
* for each algorithm its own effective ``alpha`` and ``beta`` (``gamma`` held
  at the measured value: every formula moves ``b`` and ``c`` together with the
  message size, so allreduce timings alone cannot tell beta from gamma), by
  non-negative least squares on the *relative* error over every rank count and
  every size from ``min_bytes`` up. An algorithm's alpha includes its Python
  overhead per message, and its beta the copies it makes besides the transfer.

Caches: below some message size an algorithm's data stays in the node's
caches and moves (and is reduced) faster than above it. Each algorithm's fit
therefore tries a split size ``T`` between every pair of neighbouring
measured sizes (and no split): ``beta_cached`` applies up to ``T`` and
``beta`` above, ``gamma`` likewise from the reduction timings on either side;
the split with the smallest worst relative error is kept.

When a run has more ranks on a node than the node has cores (a laptop or CI
box), every rank gets ``cores / ranks`` of a core: the bandwidth and
reduction terms stretch by ``s = ranks / cores``, and every message on the
critical path also waits for its busy-polling receiver to get a core, which
the fit charges as ``alpha_oversub`` per message per unit of ``s - 1`` (one more
column; zero without oversubscription). The fit and the predictions apply both,
so ``alpha``, ``beta`` and ``gamma`` describe one rank per core, the case
projected to clusters.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .costs import FLAT, Params, coefficients

__all__ = ["Fit", "fit", "nnls", "compare", "oversubscription"]


@dataclass
class Fit:
    transport: Params              # ping-pong alpha, beta; measured gamma
    algorithms: dict[str, Params]  # each algorithm's effective parameters
    min_bytes: int


def nnls(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares ``a x ~ y`` with ``x >= 0``, exactly, for the few columns used here."""
    best, best_x = math.inf, np.zeros(a.shape[1])
    for k in range(1, a.shape[1] + 1):
        for cols in itertools.combinations(range(a.shape[1]), k):
            x, *_ = np.linalg.lstsq(a[:, cols], y, rcond=None)
            if np.any(x < 0):
                continue
            r = float(np.sum((a[:, cols] @ x - y) ** 2))
            if r < best:
                best, best_x = r, np.zeros(a.shape[1])
                best_x[list(cols)] = x
    return best_x


def oversubscription(run: dict[str, Any]) -> float:
    """How many ranks share each core of the busiest node (>= 1)."""
    per_node, cores = int(run.get("ranks_per_node") or run["ranks"]), int(run.get("cores") or 1)
    return max(1.0, per_node / max(cores, 1))


def _reduce_rows(runs: dict[str, Any]) -> list[tuple[float, float]]:
    rows = [(n, t / n) for run in runs.values() for n, t in run.get("reduce", []) if n > 0]
    if not rows:
        raise ValueError("no reduction timings in the measurements ('hpcdl model measure')")
    return rows


def _gammas(rows: list[tuple[float, float]], split: float | None) -> tuple[float | None, float]:
    """(gamma up to ``split``, gamma above it): medians of the per-byte reduction times."""
    everything = float(np.median([g for _, g in rows]))
    if split is None:
        return None, everything
    below = [g for n, g in rows if n <= split]
    above = [g for n, g in rows if n > split]
    return (float(np.median(below)) if below else None,
            float(np.median(above)) if above else everything)


def _transport(runs: dict[str, Any], gamma: float) -> Params:
    rows = [(n, t) for run in runs.values() if _single_node(run)
            for n, t in run.get("pingpong", [])]
    if not rows:
        return Params(0.0, 0.0, gamma)
    n = np.array([r[0] for r in rows], float)
    t = np.array([r[1] for r in rows], float)
    x = nnls(np.stack([1 / t, n / t], axis=1), np.ones_like(t))
    return Params(float(x[0]), float(x[1]), gamma)


def _single_node(run: dict[str, Any]) -> bool:
    # runs across nodes (hpcdl.model.links) have two kinds of link: not this fit's
    return int(run.get("nodes") or 1) == 1


def _judged(runs: dict[str, Any], name: str, min_bytes: int) -> list[tuple[dict, float, float]]:
    return [(run, n, t) for run in runs.values() if int(run["ranks"]) >= 2 and _single_node(run)
            for n, t in run.get("allreduce", {}).get(name, []) if n >= min_bytes and t > 0]


def _fit_split(name: str, rows: list[tuple[dict, float, float]],
               reduce_rows: list[tuple[float, float]], split: float | None) -> tuple[Params, float]:
    g_cached, g = _gammas(reduce_rows, split)
    a_rows, target = [], []
    for run, n, t in rows:
        a, b, c = coefficients(name, int(run["ranks"]), n)
        s = oversubscription(run)
        cached = split is not None and n <= split
        gamma = g_cached if cached and g_cached is not None else g
        cols = [a / t, a * (s - 1) / t, s * b / t] if split is None else \
            [a / t, a * (s - 1) / t, s * b / t if cached else 0.0, 0.0 if cached else s * b / t]
        a_rows.append(cols)
        target.append(1.0 - s * c * gamma / t)
    x = nnls(np.array(a_rows), np.array(target))
    if split is None:
        prm = Params(float(x[0]), float(x[2]), g, alpha_oversub=float(x[1]))
    else:
        prm = Params(float(x[0]), float(x[3]), g, beta_cached=float(x[2]),
                     gamma_cached=g_cached, cache_bytes=split, alpha_oversub=float(x[1]))
    worst = max(abs(_predict(prm, name, run, n) / t - 1) for run, n, t in rows)
    return prm, worst


def fit(data: dict[str, Any], min_bytes: int = 1 << 16) -> Fit:
    """Fit every algorithm found in ``data['runs'][*]['allreduce']``."""
    runs = data["runs"]
    reduce_rows = _reduce_rows(runs)
    algorithms: dict[str, Params] = {}
    names = sorted({a for run in runs.values() for a in run.get("allreduce", {})},
                   key=lambda a: FLAT.index(a) if a in FLAT else len(FLAT))
    for name in names:
        rows = _judged(runs, name, min_bytes)
        if not rows:
            continue
        sizes = sorted({n for _, n, _ in rows})
        splits: list[float | None] = [None] + [math.sqrt(a * b) for a, b in zip(sizes, sizes[1:])]
        best: tuple[Params, float] | None = None
        for split in splits:  # no split first: a split must do strictly better to be kept
            candidate = _fit_split(name, rows, reduce_rows, split)
            if best is None or candidate[1] < best[1] - 1e-9:
                best = candidate
        algorithms[name] = best[0]
    return Fit(_transport(runs, _gammas(reduce_rows, None)[1]), algorithms, min_bytes)


def _predict(prm: Params, name: str, run: dict[str, Any], n: float) -> float:
    a, b, c = coefficients(name, int(run["ranks"]), n)
    s = oversubscription(run)
    return a * (prm.alpha + (s - 1) * prm.alpha_oversub) + s * (b * prm.beta_at(n)
                                                                 + c * prm.gamma_at(n))


def predict(f: Fit, name: str, run: dict[str, Any], n: float) -> float:
    """The fitted time of ``name`` for ``n`` bytes under the conditions of ``run``."""
    return _predict(f.algorithms[name], name, run, n)


def compare(data: dict[str, Any], f: Fit) -> list[dict[str, Any]]:
    """One row per (ranks, algorithm, size): measured, predicted, relative error, and
    ``spread``: how far the measurement's own rounds lay apart (slowest / fastest - 1;
    None when the file has a single round or predates ``allreduce_rounds``)."""
    out = []
    for key in sorted(data["runs"], key=lambda k: (int(data["runs"][k]["ranks"]), k)):
        run = data["runs"][key]
        if not _single_node(run):
            continue
        rounds = {name: {int(n): ts for n, ts in rows}
                  for name, rows in run.get("allreduce_rounds", {}).items()}
        for name, rows in run.get("allreduce", {}).items():
            if name not in f.algorithms or int(run["ranks"]) < 2:
                continue
            for n, t in rows:
                pred = predict(f, name, run, n)
                ts = rounds.get(name, {}).get(int(n), [])
                spread = max(ts) / min(ts) - 1 if len(ts) > 1 and min(ts) > 0 else None
                out.append({"ranks": int(run["ranks"]), "algorithm": name, "bytes": int(n),
                            "measured_s": t, "predicted_s": pred, "error": pred / t - 1,
                            "spread": spread})
    return out
