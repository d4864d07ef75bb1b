"""Moved to :mod:`hpcdl.tuning.project` (the pure tuning layer); this path keeps working."""

from ..tuning.project import Network, PRESETS, project, crossovers, parse_quantity  # noqa: F401

__all__ = ['Network', 'PRESETS', 'project', 'crossovers', 'parse_quantity']
