"""Shared by the torch-backend tests: one default "hpcdl" process group per process.

The group is created on first use and kept for the life of the pytest process
(torch allows one default group; tearing it down between files would only
re-run the same setup). Serially it is a one-rank group over MPI's singleton.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

import hpcdl.torch  # noqa: F401 - registers the backend


def world() -> tuple[int, int]:
    """(rank, size) of the default "hpcdl" group, creating it on first call."""
    if not dist.is_initialized():
        dist.init_process_group("hpcdl")
    assert dist.get_backend() == "hpcdl"
    return dist.get_rank(), dist.get_world_size()


def rank_data(seed: int, rank: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Rank ``rank``'s input, reproducible on every rank (the NumPy reference needs all)."""
    rng = np.random.default_rng(seed * 1000 + rank)
    if dtype == torch.bool:
        return torch.from_numpy(rng.integers(0, 2, shape).astype(bool))
    if dtype.is_floating_point:
        return torch.from_numpy(rng.uniform(-2, 2, shape)).to(dtype)
    if dtype.is_complex:
        return torch.from_numpy(rng.uniform(-2, 2, shape) + 1j * rng.uniform(-2, 2, shape)).to(dtype)
    lo, hi = (0, 4) if dtype == torch.uint8 else (-3, 4)
    return torch.from_numpy(rng.integers(lo, hi, shape)).to(dtype)
