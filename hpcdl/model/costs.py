"""Moved to :mod:`hpcdl.tuning.costs` (the pure tuning layer); this path keeps working."""

from ..tuning.costs import (  # noqa: F401
    Params, ALGORITHMS, FLAT, CHUNK_BYTES, coefficients, cost, cluster_cost)

__all__ = ['Params', 'ALGORITHMS', 'FLAT', 'CHUNK_BYTES', 'coefficients', 'cost', 'cluster_cost']
