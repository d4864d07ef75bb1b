"""Small ULFM helpers for the parameter server and P-Reduce (docs/fault-tolerance.md).

Fault-tolerant mode is on when the environment has ``HPCDL_FT=1`` (``hpcdl launch
--ft``, or ``mpiexec --with-ft ulfm -x HPCDL_FT=1``). Then the communicators these
modes use return MPI errors instead of aborting, and a dead peer shows up as an
MPI error of class ``MPI_ERR_PROC_FAILED`` / ``_PENDING`` / ``MPI_ERR_REVOKED``
(raw, or wrapped by hpcdl as a :class:`~hpcdl.errors.CommError` whose cause is the
MPI error, or already a :class:`~hpcdl.errors.ProcessFailed`).
"""

from __future__ import annotations

import os

from mpi4py import MPI

from .errors import ProcessFailed

__all__ = ["ft_enabled", "errors_return", "is_process_failure", "failed_ranks", "ack_failed",
           "agree", "revoke", "shrink", "quiet_test"]

_FAILURE_CLASSES = tuple(getattr(MPI, n) for n in
                         ("ERR_PROC_FAILED", "ERR_PROC_FAILED_PENDING", "ERR_REVOKED")
                         if hasattr(MPI, n))


def ft_enabled() -> bool:
    return os.environ.get("HPCDL_FT", "") == "1"


def errors_return(comm: MPI.Comm) -> MPI.Comm:
    """In FT mode, make ``comm`` (and what is later Dup'ed or Split from it) return
    errors instead of aborting; a no-op otherwise. Returns ``comm``."""
    if ft_enabled():
        comm.Set_errhandler(MPI.ERRORS_RETURN)
    return comm


def is_process_failure(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says a peer died."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, ProcessFailed):
            return True
        if isinstance(exc, MPI.Exception) and exc.Get_error_class() in _FAILURE_CLASSES:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def quiet_test(req: MPI.Request) -> bool:
    """``req.Test()``, but a request to or from a dead peer counts as finished (the
    caller has dropped, or will drop, that peer)."""
    try:
        return bool(req.Test())
    except MPI.Exception as exc:
        if is_process_failure(exc):
            return True
        raise


def failed_ranks(comm: MPI.Comm) -> list[int]:
    """The ranks of ``comm`` this process knows to be dead (acknowledged or not)."""
    group = comm.Get_failed()
    try:
        n = group.Get_size()
        if n == 0:
            return []
        local = comm.Get_group()
        try:
            return sorted(int(r) for r in MPI.Group.Translate_ranks(group, list(range(n)), local))
        finally:
            local.Free()
    finally:
        group.Free()


def ack_failed(comm: MPI.Comm) -> list[int]:
    """Acknowledge every failure known on ``comm`` (so receives from ``MPI.ANY_SOURCE``
    work again) and return the dead ranks."""
    dead = failed_ranks(comm)
    comm.Ack_failed()
    return dead


def agree(comm: MPI.Comm, ok: bool) -> bool:
    """True when every surviving rank of ``comm`` passes ``ok`` True (``MPI_Comm_agree``,
    which also completes on a revoked communicator). A failure not yet acknowledged
    makes the agreement raise on every survivor alike: that counts as False."""
    try:
        comm.Ack_failed()
        return bool(comm.Agree(int(bool(ok))) & 1)
    except MPI.Exception as exc:
        if exc.Get_error_class() in _FAILURE_CLASSES:
            return False
        raise


def revoke(comm: MPI.Comm) -> None:
    """Revoke ``comm``: every rank still inside (or later starting) an operation on it
    gets ``MPI_ERR_REVOKED`` instead of waiting for a rank that has given up on it."""
    try:
        comm.Revoke()
    except MPI.Exception:
        pass  # revoked already


def shrink(comm: MPI.Comm) -> MPI.Comm:
    """Revoke ``comm`` (so a rank still inside an operation on it gets out) and return a
    new communicator of its survivors, which returns errors too. ``comm`` is freed."""
    revoke(comm)
    new = comm.Shrink()
    new.Set_errhandler(MPI.ERRORS_RETURN)
    try:
        comm.Free()
    except MPI.Exception:
        pass  # freeing a revoked communicator may report the failure again
    return new
