"""Moved to :mod:`hpcdl.tuning.costs` (the pure tuning layer); this path keeps working."""

from ..tuning.costs import Params, ALGORITHMS, FLAT, CHUNK_BYTES, coefficients, cost, cluster_cost  # noqa: F401

__all__ = ['Params', 'ALGORITHMS', 'FLAT', 'CHUNK_BYTES', 'coefficients', 'cost', 'cluster_cost']
