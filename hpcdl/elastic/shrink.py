"""Shrink: the survivors of a failure build a new context without the dead ranks.

ULFM's recipe, on every survivor: ``Revoke`` the old communicators (a survivor
still waiting on a live peer learns of the failure only through the revoke),
``Shrink`` (a fault-tolerant collective: the new communicator holds exactly the
ranks alive when it ran), and rebuild hpcdl's context over it (node layout,
watchdog view). The new context becomes the default, so ``comm=None`` means the
survivors from then on.
"""

from __future__ import annotations

from mpi4py import MPI

from .. import ulfm
from ..errors import InvalidArgumentError
from ..runtime import Context, get_context, init, set_default_context

__all__ = ["shrink", "agree"]


def _retire(ctx: Context) -> None:
    """Revoke the old context's communicators and stop its progress thread.

    Operations still queued on it fail at once on the revoked communicator, so the
    close does not wait for them; its communicators are not freed (a freed handle
    that a late error report still names would crash, and a handful of dead
    communicators per failure costs nothing)."""
    ulfm.revoke(ctx.comm, ctx.local_comm, ctx.cross_comm)
    for c in (ctx.comm, ctx.local_comm, ctx.cross_comm):
        executor = getattr(c, "executor", None)
        if executor is not None:
            executor.close(timeout=5.0)


def shrink(ctx: Context | None = None) -> Context:
    """Collective over the survivors of ``ctx`` (default: the default context): the
    context over the ranks still alive, made the default. Needs fault-tolerant mode
    (``hpcdl launch --ft``). Ranks keep their relative order (rank 0 stays the
    lowest surviving rank)."""
    if not ulfm.ft_enabled():
        raise InvalidArgumentError("hpcdl.elastic needs fault-tolerant mode: launch with "
                                   "`hpcdl launch --ft` (mpiexec --with-ft ulfm, HPCDL_FT=1)",
                                   op="elastic.shrink")
    old = get_context() if ctx is None else ctx
    _retire(old)
    survivors = old.comm.mpi.Shrink()
    try:
        new = init(survivors)
    finally:
        survivors.Free()   # init() works on its own Dup
    set_default_context(new)
    return new


def agree(ctx: Context, flag: bool) -> bool:
    """``MPI_Comm_agree`` over ``ctx``: True when every rank passed True (fault tolerant:
    a rank that died meanwhile makes it raise ProcessFailed on every survivor)."""
    try:
        return bool(ctx.comm.mpi.Agree(int(bool(flag))))
    except MPI.Exception as exc:
        raise ulfm.process_failed(exc, ctx.comm, "elastic.agree") from exc


