"""Moved to :mod:`hpcdl.tuning.auto` (the pure tuning layer); this path keeps working."""

from ..tuning.auto import model_rules, _fitted  # noqa: F401

__all__ = ['model_rules']
