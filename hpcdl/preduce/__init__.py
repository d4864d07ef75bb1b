"""Dynamic P-Reduce (Miao et al., SIGMOD 2021): the first P ready ranks average together.

``PReduce`` is a session (a controller thread on rank 0 plus cached group
communicators); ``preduce(x, P)`` is the one-call form over a session kept per
``(communicator, P)``, ended by ``preduce_close(x, P)``. See docs/algorithms.md.
"""

from __future__ import annotations

from typing import Any

from ..runtime import default_comm
from .connectivity import Connectivity, UnionFind, default_max_groups
from .controller import Controller, Deadline
from .messages import Reply
from .session import PReduce

__all__ = ["PReduce", "preduce", "preduce_close", "Reply", "Controller", "Deadline",
           "Connectivity", "UnionFind", "default_max_groups"]

_SESSIONS: dict[tuple[int, int], PReduce] = {}


def preduce(x: Any, group_size: int, comm: Any = None, **options: Any) -> Reply:
    """Average ``x`` in place with the group of at most ``group_size`` ranks that the
    controller forms from the first ready ranks; returns the controller's ``Reply``.

    The first call on a ``(comm, group_size)`` pair creates the session
    (collective; ``options`` go to :class:`PReduce`). After a ``stop`` reply the
    next call starts a new session.
    """
    c = default_comm(comm)
    key = (id(c), group_size)
    session = _SESSIONS.get(key)
    if session is None or session.stopped:
        session = _SESSIONS[key] = PReduce(group_size, c, **options)
    return session(x)


def preduce_close(x: Any, group_size: int, comm: Any = None) -> Reply | None:
    """End the ``preduce`` session of ``(comm, group_size)`` with one full average of ``x``."""
    session = _SESSIONS.pop((id(default_comm(comm)), group_size), None)
    return None if session is None else session.close(x)
