"""``hpcdl.elastic.run``: call the training function again after each failure, on the survivors.

    state = hpcdl.elastic.State(model=model, optimizer=opt, sampler=sampler, epoch=1, step=0)

    @hpcdl.elastic.run
    def train(state):
        ...               # resume from state.epoch / state.sampler.position
        state.commit()    # after every step

    train(state)

The shape of Horovod's ``hvd.elastic.run`` and torchelastic's restart-from-state,
without a driver or a restart: on :class:`~hpcdl.errors.ProcessFailed` every
survivor shrinks (:func:`~hpcdl.elastic.shrink`), agrees on and restores the
newest commit (:meth:`State.sync`), runs the reset callbacks, and calls the
function again. A failure during the recovery itself starts it over. Each
recovery is recorded in ``state.failures`` (the main job's ``metrics.json``).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

from mpi4py import MPI

from ..errors import ProcessFailed
from ..runtime import get_context
from .shrink import shrink

__all__ = ["run", "MinRanksReached"]


class MinRanksReached(Exception):
    """Fewer survivors than ``min_ranks``: the caller checkpoints and exits for a requeue."""

    def __init__(self, ranks: int, min_ranks: int) -> None:
        self.ranks, self.min_ranks = ranks, min_ranks
        super().__init__(f"{ranks} rank(s) left, fewer than min_ranks={min_ranks}")


def world_ranks(comm: Any) -> set[int]:
    """The ``COMM_WORLD`` ranks of an hpcdl communicator's members."""
    group = comm.mpi.Get_group()
    try:
        return set(MPI.Group.Translate_ranks(group, list(range(comm.size)),
                                             MPI.COMM_WORLD.Get_group()))
    finally:
        group.Free()


def _recover(state: Any, error: ProcessFailed, min_ranks: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    before = world_ranks(get_context().comm)
    at_failure = int(state.committed_step)
    while True:
        try:
            ctx = shrink()
            step = state.sync(ctx)
            break
        except ProcessFailed:   # another rank died while we recovered: shrink again
            continue
    # Named by world rank, from the two groups: exact on every survivor (ULFM's list of
    # failed ranks holds only those this rank has heard of; a revoke names nobody).
    record = {"step": step, "lost_ranks": sorted(before - world_ranks(ctx.comm)),
              "ranks_after": ctx.size, "steps_lost": max(0, at_failure - step)}
    # Reset even below min_ranks: the caller's checkpoint then runs over the survivors.
    state.reset(ctx)
    record["recovery_s"] = round(time.perf_counter() - t0, 4)
    state.failures.append(record)
    if ctx.size < min_ranks:
        raise MinRanksReached(ctx.size, min_ranks) from error
    return record


def run(fn: Callable[..., Any] | None = None, *, min_ranks: int = 1) -> Any:
    """Decorate ``fn(state, ...)``: re-run it on the survivors after each ProcessFailed.
    Below ``min_ranks`` survivors it raises :class:`MinRanksReached` (state restored)."""
    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(state: Any, *args: Any, **kwargs: Any) -> Any:
            while True:
                try:
                    return f(state, *args, **kwargs)
                except ProcessFailed as error:
                    _recover(state, error, min_ranks)
        return wrapper
    return deco if fn is None else deco(fn)
