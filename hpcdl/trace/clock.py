"""The trace's clock and lanes: a leaf, so the recorder and the package share them
without importing each other."""

from __future__ import annotations

import time

__all__ = ["now", "LANES"]

now = time.perf_counter_ns
LANES = ("collective", "queue", "mpi", "staging", "compression", "optimizer", "user")
