"""Project the fitted algorithms to clusters of 8 ... 4,096 ranks.

Inside a node each algorithm keeps the parameters fitted on this machine (its
shared-memory transfer rate and its software cost per message). Across nodes
a message pays the network's latency plus that same software cost, and the
network's per-byte time (1 / the node's injection bandwidth), shared by the
ranks of a node that cross at once (see :func:`hpcdl.model.costs.cluster_cost`).

Presets give the published line rate of common interconnects; their latencies
are typical MPI small-message latencies, not vendor guarantees: pass
``--alpha``/``--bandwidth`` for your own network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .costs import ALGORITHMS, Params, cluster_cost
from .fit import Fit
from .rules import rules_from_timings

__all__ = ["Network", "PRESETS", "project", "crossovers", "parse_quantity"]


@dataclass(frozen=True)
class Network:
    name: str
    alpha: float        # s
    bandwidth: float    # bytes/s per node

    def describe(self) -> str:
        return f"{self.name}: alpha {self.alpha * 1e6:g} us, {self.bandwidth / 1e9:g} GB/s per node"


#: line rate / 8 bits; latency: a typical MPI ping-pong on that fabric
PRESETS: dict[str, Network] = {n.name: n for n in (
    Network("ndr-ib", 1.0e-6, 50e9),        # InfiniBand NDR 400 Gb/s
    Network("hdr-ib", 1.5e-6, 25e9),        # InfiniBand HDR 200 Gb/s
    Network("edr-ib", 1.5e-6, 12.5e9),      # InfiniBand EDR 100 Gb/s
    Network("slingshot", 2.0e-6, 25e9),     # HPE Slingshot-11 200 Gb/s
    Network("roce-100g", 3.0e-6, 12.5e9),   # RoCE v2, 100 GbE
    Network("ethernet-25g", 25e-6, 3.125e9),  # TCP over 25 GbE
    Network("ethernet-10g", 30e-6, 1.25e9),   # TCP over 10 GbE
)}

_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9,
          "B/s": 1.0, "KB/s": 1e3, "MB/s": 1e6, "GB/s": 1e9, "TB/s": 1e12,
          "Gb/s": 1e9 / 8, "Mb/s": 1e6 / 8}


def parse_quantity(text: str, kind: str) -> float:
    """``'1.5us'`` -> 1.5e-6; ``'25GB/s'`` -> 2.5e10; ``'200Gb/s'`` -> 2.5e10. A bare
    number is seconds (``kind='time'``) or bytes/s (``kind='rate'``)."""
    t = text.strip()
    for unit in sorted(_UNITS, key=len, reverse=True):
        if t.endswith(unit):
            number, scale = t[: -len(unit)], _UNITS[unit]
            if (unit.endswith("/s")) != (kind == "rate"):
                raise ValueError(f"{text!r} is not a {kind}")
            break
    else:
        number, scale = t, 1.0
    value = float(number) * scale
    if value <= 0:
        raise ValueError(f"{text!r}: must be positive")
    return value


def _params(f: Fit, name: str, network: Network) -> tuple[Params, Params]:
    own = f.algorithms["ring" if name == "hierarchical" else name]
    software = max(0.0, own.alpha - f.transport.alpha)
    return own, Params(network.alpha + software, 1.0 / network.bandwidth, own.gamma)


def project(f: Fit, network: Network, per_node: int, ranks: list[int],
            sizes: list[int]) -> dict[int, dict[int, dict[str, float]]]:
    """``{ranks: {bytes: {algorithm: seconds}}}`` for every fitted algorithm (and
    ``hierarchical``, built from the fitted ring)."""
    names = [a for a in ALGORITHMS if a in f.algorithms or
             (a == "hierarchical" and "ring" in f.algorithms)]
    out: dict[int, dict[int, dict[str, float]]] = {}
    for p in ranks:
        out[p] = {}
        for n in sizes:
            out[p][n] = {}
            for name in names:
                intra, inter = _params(f, name, network)
                out[p][n][name] = cluster_cost(name, p, n, per_node, intra, inter)
    return out


def crossovers(table: dict[int, dict[str, float]]) -> list[list[Any]]:
    """``{bytes: {algorithm: s}}`` -> auto's ``[[max_bytes, fastest], ..., [None, fastest]]``."""
    return rules_from_timings(table)
