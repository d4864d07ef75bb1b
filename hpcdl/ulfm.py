"""Fault-tolerant mode (ULFM): a dead rank becomes an error the survivors can handle.

``HPCDL_FT=1`` (set by ``hpcdl launch --ft``, which also runs mpiexec with
``--with-ft ulfm``) turns it on. Then every communicator hpcdl makes or wraps
gets ``MPI.ERRORS_RETURN`` (the default, ``ERRORS_ARE_FATAL``, ends the job on
the first failure), and an MPI error of class ``MPI_ERR_PROC_FAILED``,
``MPI_ERR_PROC_FAILED_PENDING`` or ``MPI_ERR_REVOKED`` becomes
:class:`~hpcdl.errors.ProcessFailed`, naming the dead ranks this rank knows of.

The communicator is revoked before the error is raised: a survivor that waits
on a *live* peer (a ring neighbour, a node leader) learns of the failure only
through the revoke, otherwise it would wait for a message that peer, now
handling its own error, never sends. Recovery (shrink, agree, restore) is
:mod:`hpcdl.elastic` for data-parallel training and :mod:`hpcdl.survivors` for the
parameter-server and P-Reduce modes; the helpers both use are here.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

from mpi4py import MPI

from .errors import ProcessFailed

__all__ = ["ft_enabled", "FAILURE_CLASSES", "is_failure", "is_process_failure",
           "make_fault_tolerant", "errors_return", "failed_ranks", "ack_failed", "agree",
           "revoke", "shrink", "quiet_test", "process_failed", "recover_channel",
           "note_failure", "guard_exit"]

#: ULFM's error classes (mpi4py exposes them where the MPI library has ULFM).
FAILURE_CLASSES = frozenset(
    getattr(MPI, name) for name in ("ERR_PROC_FAILED", "ERR_PROC_FAILED_PENDING", "ERR_REVOKED")
    if hasattr(MPI, name))


def ft_enabled() -> bool:
    """Is fault-tolerant mode on (``HPCDL_FT=1``)?"""
    return os.environ.get("HPCDL_FT", "0") == "1"


def is_failure(exc: BaseException) -> bool:
    """Is ``exc`` an MPI error that says a process failed (or the communicator was revoked)?"""
    return isinstance(exc, MPI.Exception) and exc.Get_error_class() in FAILURE_CLASSES


def make_fault_tolerant(comm: Any) -> Any:
    """In FT mode, ``comm`` (mpi4py) reports errors instead of aborting; returns ``comm``."""
    if ft_enabled() and comm != MPI.COMM_NULL:
        comm.Set_errhandler(MPI.ERRORS_RETURN)
    return comm


#: The name the parameter server and P-Reduce use (they hold mpi4py communicators).
errors_return = make_fault_tolerant


def is_process_failure(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from (hpcdl wraps MPI errors in
    :class:`~hpcdl.errors.CommError`), says a peer died."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, ProcessFailed) or is_failure(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def quiet_test(req: Any) -> bool:
    """``req.Test()``, but a request to or from a dead peer counts as finished (the
    caller has dropped, or will drop, that peer)."""
    try:
        return bool(req.Test())
    except MPI.Exception as exc:
        if is_process_failure(exc):
            return True
        raise


def _mpi(comm: Any) -> Any:
    """The mpi4py communicator behind an hpcdl one (or ``comm`` itself); None for fakes."""
    inner = getattr(comm, "mpi", comm)
    return inner if isinstance(inner, MPI.Comm) else None


def failed_ranks(comm: Any) -> tuple[int, ...]:
    """Ranks of ``comm`` this process knows to be dead (``MPI_Comm_get_failed``)."""
    mpi = _mpi(comm)
    if mpi is None or not hasattr(mpi, "Get_failed"):
        return ()
    try:
        group = mpi.Get_failed()
        try:
            n = group.Get_size()
            ranks = MPI.Group.Translate_ranks(group, list(range(n)), mpi.Get_group())
        finally:
            group.Free()
    except MPI.Exception:
        return ()
    return tuple(sorted(int(r) for r in ranks if r != MPI.UNDEFINED))


def _world(mpi: Any, ranks: tuple[int, ...]) -> list[int]:
    try:
        return list(MPI.Group.Translate_ranks(mpi.Get_group(), list(ranks),
                                              MPI.COMM_WORLD.Get_group()))
    except MPI.Exception:
        return list(ranks)


def revoke(*comms: Any) -> None:
    """Revoke each communicator (fakes and freed ones are skipped; twice is harmless)."""
    note_failure()
    for comm in comms:
        mpi = _mpi(comm)
        if mpi is None or mpi == MPI.COMM_NULL or not hasattr(mpi, "Revoke"):
            continue
        try:
            mpi.Revoke()
        except MPI.Exception:
            pass   # already revoked, or its own peers are all gone: nothing left to tell


def ack_failed(comm: Any) -> list[int]:
    """Acknowledge every failure known on ``comm`` (so receives from ``MPI.ANY_SOURCE``
    work again) and return the dead ranks."""
    dead = list(failed_ranks(comm))
    if dead:
        note_failure()
    _mpi(comm).Ack_failed()
    return dead


def agree(comm: Any, ok: bool) -> bool:
    """True when every surviving rank of ``comm`` passes ``ok`` True (``MPI_Comm_agree``,
    which also completes on a revoked communicator). A failure not yet acknowledged
    makes the agreement raise on every survivor alike: that counts as False."""
    mpi = _mpi(comm)
    try:
        mpi.Ack_failed()
        return bool(mpi.Agree(int(bool(ok))) & 1)
    except MPI.Exception as exc:
        if is_failure(exc):
            return False
        raise


def shrink(comm: Any) -> Any:
    """Revoke ``comm`` (so a rank still inside an operation on it gets out) and return a
    new mpi4py communicator of its survivors, which returns errors too. ``comm`` is freed."""
    mpi = _mpi(comm)
    revoke(mpi)
    new = mpi.Shrink()
    new.Set_errhandler(MPI.ERRORS_RETURN)
    try:
        mpi.Free()
    except MPI.Exception:
        pass  # freeing a revoked communicator may report the failure again
    return new


def process_failed(exc: BaseException, comm: Any, op: str) -> ProcessFailed:
    """``exc`` (a ULFM error in ``op`` on ``comm``) as a ProcessFailed; revokes ``comm``."""
    revoke(comm)
    failed = failed_ranks(comm)
    mpi = _mpi(comm)
    rank = mpi.Get_rank() if mpi is not None else getattr(comm, "rank", None)
    size = mpi.Get_size() if mpi is not None else getattr(comm, "size", None)
    who = (f"rank(s) {', '.join(map(str, failed))} of this communicator "
           f"(world rank(s) {', '.join(map(str, _world(mpi, failed)))}) failed" if failed
           else "another rank saw a process fail and revoked this communicator")
    return ProcessFailed(f"{who} ({exc.Get_error_string()}); the survivors can shrink and "
                         "go on (hpcdl.elastic)", failed=failed, rank=rank, size=size, op=op)


def recover_channel(exc: BaseException, comm: Any, pending: list, receive: Any,
                    repost: Any) -> tuple[list, Any]:
    """For a thread that serves a receive from any source on ``comm`` (the watchdog):
    after ``exc``, a ULFM failure (anything else is re-raised), acknowledge the failure so
    such receives work on, drop the sends in ``pending`` (``(request, buffer)`` pairs)
    that went to the dead, and keep ``receive`` if ULFM left it usable, else post a new
    one with ``repost()``. Returns the new ``(pending, receive)``."""
    if not is_failure(exc):
        raise exc
    note_failure()
    try:
        comm.Ack_failed()
    except MPI.Exception:
        pass
    kept = []
    for req, data in pending:
        try:
            if not req.Test():
                kept.append((req, data))
        except MPI.Exception:
            pass   # a send to a dead rank: nobody is left to read it
    try:
        receive.Test()
    except MPI.Exception:
        receive = repost()
    return kept, receive


# --- leaving after a failure -------------------------------------------------------
# Seen here (Open MPI 5.0.11, ULFM, a loaded 2-core machine, about 2 runs in 60): after a
# rank died, the survivors finished their work and then slept forever inside
# ompi_mpi_finalize (gdb: usleep under ompi_mpi_finalize, called by mpi4py's exit hook).
# Under --with-ft ulfm, prterun takes a rank that exits without MPI_Finalize as a normal
# end and passes its status on (measured: 0 and 75 came through), so after a failure a
# survivor leaves without finalizing, with the status the program asked for.

_FAILURE_SEEN = False
_EXIT_STATUS = 0
_GUARDED = False


def note_failure() -> None:
    """Record that this process has seen a rank of the job die."""
    global _FAILURE_SEEN
    _FAILURE_SEEN = True


def _status(code: Any) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 1   # as Python does for sys.exit("text")


def guard_exit() -> None:
    """FT mode: called once by ``hpcdl.init`` before anything else registers an exit
    handler, so its handler runs after theirs. It remembers the status given to
    ``sys.exit`` and, if a failure was seen, ends the process with it after flushing,
    skipping MPI_Finalize. (A program that raises ``SystemExit`` itself after a failure
    leaves with status 0: use ``sys.exit``.)"""
    global _GUARDED
    if _GUARDED or not ft_enabled():
        return
    _GUARDED = True
    original = sys.exit

    def exit_recording(status: Any = None) -> None:
        global _EXIT_STATUS
        _EXIT_STATUS = _status(status)
        original(status)

    sys.exit = exit_recording
    atexit.register(_leave)


def _leave() -> None:
    if not _FAILURE_SEEN or MPI.Is_finalized():
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream must not keep the rank alive
            pass
    os._exit(_EXIT_STATUS)
