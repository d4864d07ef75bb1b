"""Fit the cost model's parameters to measurements, and compare the fit with them.

* ``gamma`` (s per byte reduced) from the local reduction timings, 1 MiB and up;
* the transport's ``alpha`` and ``beta`` from the ping-pong;
* for each algorithm its own effective ``alpha`` and ``beta`` (``gamma`` held
  at the measured value: every formula moves ``b`` and ``c`` together with the
  message size, so allreduce timings alone cannot tell beta from gamma), by
  non-negative least squares on the *relative* error over every rank count and
  every size from ``min_bytes`` up. An algorithm's alpha includes its Python
  overhead per message, and its beta the copies it makes besides the transfer.

When a run has more ranks on a node than the node has cores (a laptop or CI
box), every rank gets ``cores / ranks`` of a core: the bandwidth and
reduction terms stretch by ``ranks / cores``. The fit and the predictions
apply that factor, so the parameters describe one rank per core, the case
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


def _gamma(runs: dict[str, Any]) -> float:
    per_byte = [t / n for run in runs.values() for n, t in run.get("reduce", []) if n > 0]
    if not per_byte:
        raise ValueError("no reduction timings in the measurements ('hpcdl model measure')")
    return float(np.median(per_byte))


def _transport(runs: dict[str, Any], gamma: float) -> Params:
    rows = [(n, t) for run in runs.values() for n, t in run.get("pingpong", [])]
    if not rows:
        return Params(0.0, 0.0, gamma)
    n = np.array([r[0] for r in rows], float)
    t = np.array([r[1] for r in rows], float)
    x = nnls(np.stack([1 / t, n / t], axis=1), np.ones_like(t))
    return Params(float(x[0]), float(x[1]), gamma)


def fit(data: dict[str, Any], min_bytes: int = 1 << 16) -> Fit:
    """Fit every algorithm found in ``data['runs'][*]['allreduce']``."""
    runs = data["runs"]
    gamma = _gamma(runs)
    algorithms: dict[str, Params] = {}
    names = sorted({a for run in runs.values() for a in run.get("allreduce", {})},
                   key=lambda a: FLAT.index(a) if a in FLAT else len(FLAT))
    for name in names:
        rows, target = [], []
        for run in runs.values():
            p, s = int(run["ranks"]), oversubscription(run)
            for n, t in run["allreduce"].get(name, []):
                if n < min_bytes or p < 2 or t <= 0:
                    continue
                a, b, c = coefficients(name, p, n)
                # relative error: divide the row by the measured time
                rows.append([a / t, s * b / t])
                target.append(1.0 - s * c * gamma / t)
        if not rows:
            continue
        x = nnls(np.array(rows), np.array(target))
        algorithms[name] = Params(float(x[0]), float(x[1]), gamma)
    return Fit(_transport(runs, gamma), algorithms, min_bytes)


def predict(f: Fit, name: str, run: dict[str, Any], n: float) -> float:
    """The fitted time of ``name`` for ``n`` bytes under the conditions of ``run``."""
    a, b, c = coefficients(name, int(run["ranks"]), n)
    p, s = f.algorithms[name], oversubscription(run)
    return a * p.alpha + s * (b * p.beta + c * p.gamma)


def compare(data: dict[str, Any], f: Fit) -> list[dict[str, Any]]:
    """One row per (ranks, algorithm, size): measured, predicted, relative error."""
    out = []
    for key in sorted(data["runs"], key=int):
        run = data["runs"][key]
        for name, rows in run.get("allreduce", {}).items():
            if name not in f.algorithms or int(run["ranks"]) < 2:
                continue
            for n, t in rows:
                pred = predict(f, name, run, n)
                out.append({"ranks": int(run["ranks"]), "algorithm": name, "bytes": int(n),
                            "measured_s": t, "predicted_s": pred, "error": pred / t - 1})
    return out
