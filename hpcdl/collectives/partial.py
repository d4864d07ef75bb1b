"""Static partial reduce: average within small groups whose membership rotates.

A full allreduce synchronises all ``n`` ranks every step. ``partial_allreduce``
averages only within groups of at most ``k`` ranks (no rank waits for a slow
rank outside its group); the grouping changes with ``step`` so that, over a
few steps, every rank's value reaches every other rank.

The schedule (:class:`DigitSchedule`): write ranks in base ``k`` with
``D = ceil(log_k n)`` digits. At step ``t`` let ``d = t mod D``: ranks that
agree on every digit except digit ``d`` form one group (at most ``k`` ranks;
fewer where ranks ``>= n`` would complete it, down to a singleton, which does
nothing). Guarantees, for any ``D`` (respectively ``2D - 1``) *consecutive*
steps, whatever step they start at:

* ``n`` a power of ``k``: every group has exactly ``k`` ranks, and after any
  ``D`` consecutive steps every rank holds exactly the average of the values
  all ranks held before them (each step averages over one digit, like one
  round of a ``k``-ary butterfly). ``D`` is the least any schedule of groups of
  ``k`` can achieve: a value reaches at most ``k^s`` ranks in ``s`` steps.
* any ``n``: after any ``2D - 1`` consecutive steps every rank's value has
  influenced every other rank's (with a positive weight). Proof: take ranks
  ``a`` and ``b``; during the first ``D`` steps, when digit ``e`` comes up, move
  the value from the rank currently holding it to the group member whose digit
  ``e`` is ``min(a_e, b_e)`` (the last of the ``D`` steps: ``b_e``); every rank
  passed is digit-wise ``<= a`` or ``<= b``, hence ``< n``, hence exists.
  The next ``D - 1`` steps raise the remaining digits to ``b``'s, passing only
  ranks digit-wise ``<= b``. ``2D - 1`` is tight (``n = 17, k = 2``).

Groups are communicators created once per ``(k, digit)`` with ``comm.split``
under a name all ranks share, and cached on the parent communicator.

The schedule is an object so that a later dynamic P-Reduce (the first ``P``
ready workers average together) can supply its own groups: anything with a
``group(rank, size, step) -> (color, key, name)`` method works.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..comm.base import Communicator
from ..errors import InvalidArgumentError
from ..context import default_comm
from .api import allreduce

__all__ = ["partial_allreduce", "DigitSchedule", "GroupSchedule", "digits_needed"]


class GroupSchedule(Protocol):
    def group(self, rank: int, size: int, step: int) -> tuple[int, int, str]:
        """``(color, key, name)`` of ``rank``'s group at ``step``: ranks with equal color
        average together, ordered by key; ``name`` is the same on every rank for
        the same grouping (it caches the communicator)."""


def digits_needed(n: int, k: int) -> int:
    """``ceil(log_k n)``, at least 1: the digits of the ranks written in base ``k``."""
    d, span = 1, k
    while span < n:
        span *= k
        d += 1
    return d


class DigitSchedule:
    """Group by all base-``k`` digits but one; the free digit cycles with the step."""

    __slots__ = ("k",)

    def __init__(self, k: int) -> None:
        self.k = k

    def group(self, rank: int, size: int, step: int) -> tuple[int, int, str]:
        k = self.k
        digit = step % digits_needed(size, k)
        low = k ** digit
        color = (rank // (low * k)) * low + rank % low
        return color, (rank // low) % k, f"hpcdl:partial:k{k}:d{digit}"

    def groups(self, size: int, step: int) -> list[list[int]]:
        """Every group at ``step`` as lists of ranks (what each rank's split yields)."""
        out: dict[int, list[tuple[int, int]]] = {}
        for r in range(size):
            color, key, _ = self.group(r, size, step)
            out.setdefault(color, []).append((key, r))
        return [[r for _, r in sorted(g)] for _, g in sorted(out.items())]


def partial_allreduce(x: Any, group_size: int, step: int, comm: Communicator | None = None,
                      algorithm: str = "auto", async_op: bool = False,
                      schedule: GroupSchedule | None = None) -> Any:
    """Average ``x`` in place within this rank's group of at most ``group_size`` ranks.

    Collective over all of ``comm``: every rank calls it with the same
    ``group_size`` and ``step``. Returns ``x`` (or a Handle with ``async_op``).
    """
    c = default_comm(comm)
    if not isinstance(group_size, int) or group_size < 2:
        raise InvalidArgumentError(f"group_size={group_size!r}: use an integer >= 2",
                                   rank=c.rank, op="partial_allreduce")
    if not isinstance(step, int) or step < 0:
        raise InvalidArgumentError(f"step={step!r}: use a non-negative integer",
                                   rank=c.rank, op="partial_allreduce")
    sched = DigitSchedule(group_size) if schedule is None else schedule
    color, key, name = sched.group(c.rank, c.size, step)
    sub = c.split(color, key, name=name)
    return allreduce(x, op="avg", algorithm=algorithm, comm=sub, async_op=async_op)
