"""Moved to :mod:`hpcdl.tuning.fit` (the pure tuning layer); this path keeps working."""

from ..tuning.fit import Fit, fit, nnls, compare, oversubscription, predict  # noqa: F401

__all__ = ['Fit', 'fit', 'nnls', 'compare', 'oversubscription']
