"""Who has averaged with whom: a union-find over the ranks, per window.

A *window* starts empty (every rank its own component) after a full sync and
ends when one component holds every rank: by then every rank's value has
reached every other rank's, through a chain of groups. The controller forces
a full sync when a window has gone ``max_groups`` groups without connecting.
"""

from __future__ import annotations

__all__ = ["UnionFind", "Connectivity", "default_max_groups"]


class UnionFind:
    """Disjoint sets over ``0..n-1`` with path halving and union by size."""

    __slots__ = ("parent", "count", "_size")

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self._size = [1] * n
        self.count = n  # components

    def find(self, a: int) -> int:
        p = self.parent
        while p[a] != a:
            p[a] = p[p[a]]
            a = p[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self._size[ra] < self._size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self._size[ra] += self._size[rb]
        self.count -= 1


class Connectivity:
    """Counts groups per window; says when a full sync must be forced."""

    __slots__ = ("n", "max_groups", "uf", "groups", "windows")

    def __init__(self, n: int, max_groups: int) -> None:
        self.n = n
        self.max_groups = max_groups
        self.uf = UnionFind(n)
        self.groups = 0      # groups closed in this window (singletons included)
        self.windows = 0     # windows that connected by themselves

    def add_group(self, members: tuple[int, ...]) -> str:
        """Record one closed group. Returns ``"connected"`` (the window closed by itself
        and a new one starts), ``"force"`` (``max_groups`` reached while still
        disconnected: the caller must run a full sync) or ``"open"``."""
        for m in members[1:]:
            self.uf.union(members[0], m)
        self.groups += 1
        if self.uf.count == 1:
            self.windows += 1
            self.reset()
            return "connected"
        return "force" if self.groups >= self.max_groups else "open"

    def reset(self) -> None:
        """A full sync connects everyone: start a new window."""
        self.uf = UnionFind(self.n)
        self.groups = 0


def default_max_groups(n: int, p: int) -> int:
    """Groups a window may take before a forced sync: 4x the fewest that can connect
    ``n`` ranks with groups of ``p`` (each adds at most ``p - 1`` edges to a spanning tree)."""
    return 4 * max(1, -(-(n - 1) // (p - 1)))
