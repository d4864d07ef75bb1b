"""``auto`` for rank counts the tuning table does not list: the fitted model's crossovers.

Used when the whole job runs on one node (the model's own measurements describe
this node's shared memory). Across nodes the network's parameters are not
known here: ``hpcdl model --alpha ... --bandwidth ... --write-table`` writes
projected rules for those rank counts into the tuning table instead.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from .data import load_measurements
from .fit import Fit, fit, predict
from .rules import powers_of_4, rules_from_timings

__all__ = ["model_rules"]


@functools.lru_cache(maxsize=1)
def _fitted() -> Fit | None:
    try:
        return fit(load_measurements(), min_bytes=1)
    except (OSError, ValueError, KeyError):
        return None


def model_rules(ranks: int) -> list[list[Any]] | None:
    """``[[max_bytes, algorithm], ..., [None, algorithm]]`` for ``ranks`` on this node,
    or None without usable measurements."""
    f = _fitted()
    if f is None or not f.algorithms or ranks < 2:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    run = {"ranks": ranks, "ranks_per_node": ranks, "cores": cores or 1}
    timings = {n: {a: predict(f, a, run, n) for a in f.algorithms}
               for n in powers_of_4(4, 256 << 20)}
    return rules_from_timings(timings)
