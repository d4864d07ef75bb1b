"""The rank grid: S pipeline stages x D data-parallel replicas.

    grid = hpcdl.pipeline.Grid(stages=2)        # D = world size / 2
    grid.stage, grid.replica                    # where this rank sits
    grid.dp_comm                                # hpcdl communicator: this stage's D replicas
    grid.pp_group                               # torch process group: this replica's S stages
    grid.comm                                   # hpcdl communicator: every rank of the grid

Rank ``r`` holds stage ``r % S`` of replica ``r // S``: the S stages of one
pipeline are consecutive ranks, so activations (sent every micro-batch) travel
between neighbours, usually on one node, while gradient averaging (once a step)
crosses nodes.
"""

from __future__ import annotations

import torch.distributed as dist

from hpcdl import groups, runtime
from hpcdl.comm.base import Communicator
from hpcdl.errors import InvalidArgumentError

from .process_group import init_process_group

__all__ = ["Grid"]

_CACHE: dict[tuple[int, int], "Grid"] = {}


class Grid:
    """Where this rank sits in the S x D grid, and the groups it talks over.

    Collective: every rank of the world builds the same grid (the groups are
    created once per (S, D) and cached, so building it again is free).
    """

    def __new__(cls, stages: int, replicas: int | None = None) -> "Grid":
        ctx = runtime.init()
        s, d = _check(stages, replicas, ctx.rank, ctx.size)
        cached = _CACHE.get((s, d))
        if cached is not None:
            return cached
        self = super().__new__(cls)
        self._build(s, d, ctx.rank)
        _CACHE[(s, d)] = self
        return self

    def _build(self, s: int, d: int, rank: int) -> None:
        init_process_group()
        self.stages, self.replicas, self.rank = s, d, rank
        self.stage, self.replica = rank % s, rank // s
        self.pipeline_ranks = [self.replica * s + i for i in range(s)]
        self.dp_ranks = [r * s + self.stage for r in range(d)]
        # Every rank takes part in creating every group, in the same order
        # (both torch's new_group and an MPI split are collective).
        self.pp_group: dist.ProcessGroup | None = None
        for rep in range(d):
            g = dist.new_group([rep * s + i for i in range(s)])
            if rep == self.replica:
                self.pp_group = g
        self.dp_comm: Communicator | None = None
        for st in range(s):
            c = groups.subgroup([r * s + st for r in range(d)])
            if st == self.stage:
                self.dp_comm = c
        # Every rank of the grid, on its own MPI context: the pipeline's set-up checks
        # agree over it without meeting traffic queued on the world communicator.
        self.comm: Communicator = runtime.init().comm.split(0, rank, name="hpcdl.pipeline.grid")

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.stages - 1

    def __repr__(self) -> str:
        return (f"Grid(stages={self.stages}, replicas={self.replicas}: rank {self.rank} is "
                f"stage {self.stage} of replica {self.replica})")


def _check(stages: int, replicas: int | None, rank: int, size: int) -> tuple[int, int]:
    if not isinstance(stages, int) or stages < 1:
        raise InvalidArgumentError(f"stages={stages!r}; must be a positive int",
                                   rank=rank, size=size, op="pipeline.Grid")
    if size % stages:
        raise InvalidArgumentError(f"stages={stages} does not divide the {size} ranks; "
                                   f"use a divisor of {size}", rank=rank, size=size,
                                   op="pipeline.Grid")
    d = size // stages
    if replicas is not None and replicas != d:
        raise InvalidArgumentError(f"stages={stages} x replicas={replicas} = "
                                   f"{stages * replicas}, but the job has {size} ranks",
                                   rank=rank, size=size, op="pipeline.Grid")
    return stages, d
