"""Timings -> crossover rules: the pure part of tuning (no MPI), shared by ``hpcdl tune``,
the cost model's projections and ``auto``'s model fallback on the collectives' hot path.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["powers_of_4", "rules_from_timings", "NATIVE_MARGIN"]


def powers_of_4(lo: int, hi: int) -> list[int]:
    sizes, s = [], lo
    while s <= hi:
        sizes.append(s)
        s *= 4
    return sizes


#: Another algorithm must beat ``native`` by this fraction to be chosen over it:
#: timings on a shared node move by several percent between runs, and a
#: crossover drawn from noise sends ``auto`` to a slower algorithm.
NATIVE_MARGIN = 0.05


def _winner(times: dict[str, float]) -> str:
    best = min(times, key=times.get)
    if "native" in times and times[best] > times["native"] * (1 - NATIVE_MARGIN):
        return "native"
    return best


def rules_from_timings(timings: dict[int, dict[str, float]]) -> list[list[Any]]:
    """``{bytes: {algorithm: seconds}}`` -> ``[[max_bytes, fastest], ..., [None, fastest]]``.

    ``native`` wins ties within :data:`NATIVE_MARGIN`."""
    sizes = sorted(timings)
    winners = [_winner(timings[s]) for s in sizes]
    rules: list[list[Any]] = []
    for i, (size, name) in enumerate(zip(sizes, winners)):
        if i + 1 < len(sizes) and winners[i + 1] == name:
            continue
        limit = None if i + 1 == len(sizes) else int(math.sqrt(size * sizes[i + 1]))
        rules.append([limit, name])
    return rules
