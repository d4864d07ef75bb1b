"""Partition named parameters across S servers, balanced by bytes.

Every tensor is cut into pieces of at most ``chunk_elems`` elements (so one
huge layer spreads over several servers), and the pieces are dealt out
largest first to the least-loaded server (LPT scheduling: the busiest server
holds at most 4/3 of the optimum). The plan depends only on the names, shapes
and ``S``, so every rank computes the same plan without talking.

A server stores its pieces back to back in one flat array; the optimizers are
elementwise, so the split changes nothing in the arithmetic: any ``S`` gives
the same training result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InvalidArgumentError

__all__ = ["Piece", "ShardPlan", "plan_shards", "DEFAULT_CHUNK_ELEMS"]

DEFAULT_CHUNK_ELEMS = 1 << 20   # 4 MiB of float32: small enough to balance, big enough to stream


@dataclass(frozen=True)
class Piece:
    """Elements ``[start, stop)`` of the flattened parameter ``name``, at ``offset`` in the
    owning server's flat shard."""

    name: str
    start: int
    stop: int
    offset: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class ShardPlan:
    """Which server holds which pieces (``shards[s]`` in shard order) and the layout."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtype: np.dtype
    shards: tuple[tuple[Piece, ...], ...]

    @property
    def num_servers(self) -> int:
        return len(self.shards)

    def shard_size(self, server: int) -> int:
        return sum(p.size for p in self.shards[server])

    def pack(self, server: int, flat: dict[str, np.ndarray], out: np.ndarray) -> np.ndarray:
        """Copy this server's pieces of the flattened arrays ``flat`` into ``out``."""
        for p in self.shards[server]:
            out[p.offset:p.offset + p.size] = flat[p.name][p.start:p.stop]
        return out

    def unpack(self, server: int, shard: np.ndarray, flat: dict[str, np.ndarray]) -> None:
        """Scatter a server's flat shard back into the flattened arrays ``flat``."""
        for p in self.shards[server]:
            flat[p.name][p.start:p.stop] = shard[p.offset:p.offset + p.size]


def plan_shards(names: Sequence[str], shapes: Sequence[Sequence[int]], dtype: np.dtype,
                num_servers: int, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> ShardPlan:
    if num_servers < 1:
        raise InvalidArgumentError(f"num_servers={num_servers}; need at least 1", op="ps.plan")
    if chunk_elems < 1:
        raise InvalidArgumentError(f"chunk_elems={chunk_elems}; need at least 1", op="ps.plan")
    if len(set(names)) != len(names):
        raise InvalidArgumentError("parameter names repeat; every name must be unique",
                                   op="ps.plan")
    pieces: list[tuple[str, int, int]] = []
    for name, shape in zip(names, shapes):
        n = int(math.prod(shape))
        for start in range(0, n, chunk_elems):
            pieces.append((name, start, min(n, start + chunk_elems)))
    # Largest first, ties by name then position: deterministic on every rank.
    order = sorted(pieces, key=lambda p: (-(p[2] - p[1]), p[0], p[1]))
    loads = [0] * num_servers
    assigned: list[list[tuple[str, int, int]]] = [[] for _ in range(num_servers)]
    for p in order:
        s = min(range(num_servers), key=lambda i: (loads[i], i))
        assigned[s].append(p)
        loads[s] += p[2] - p[1]
    rank_of = {n: i for i, n in enumerate(names)}
    shards = []
    for mine in assigned:
        mine.sort(key=lambda p: (rank_of[p[0]], p[1]))   # model order inside a shard
        offset, out = 0, []
        for name, start, stop in mine:
            out.append(Piece(name, start, stop, offset))
            offset += stop - start
        shards.append(tuple(out))
    return ShardPlan(tuple(names), tuple(tuple(int(d) for d in s) for s in shapes),
                     np.dtype(dtype), tuple(shards))
