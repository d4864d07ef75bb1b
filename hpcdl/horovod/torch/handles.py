"""Horovod's integer handles for ``*_async`` calls: ``poll(h)``, ``synchronize(h)``.

A handle maps to an hpcdl :class:`~hpcdl.Handle` (``None`` for an operation
that finished at the call, a list for a grouped call) and a function that
turns the hpcdl result into what Horovod's ``synchronize`` returns.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any, Callable

from ...errors import InvalidArgumentError

__all__ = ["register", "poll", "synchronize"]

_HANDLES: dict[int, tuple[Any, Callable[[Any], Any]]] = {}
_NEXT = itertools.count(1)
_LOCK = threading.Lock()


def register(handle: Any, finish: Callable[[Any], Any]) -> int:
    with _LOCK:
        h = next(_NEXT)
        _HANDLES[h] = (handle, finish)
    return h


def _lookup(handle: int, op: str) -> tuple[Any, Callable[[Any], Any]]:
    try:
        return _HANDLES[handle]
    except (KeyError, TypeError):
        raise InvalidArgumentError(f"handle {handle!r} is not a pending Horovod operation "
                                   "(already synchronized, or never returned by *_async)",
                                   op=op) from None


def poll(handle: int) -> bool:
    """True once the operation behind ``handle`` has finished; ``synchronize`` won't block."""
    inner, _ = _lookup(handle, "poll")
    parts = inner if isinstance(inner, list) else [inner]
    return all(h is None or h.test() for h in parts)


def synchronize(handle: int) -> Any:
    """Wait for ``handle``'s operation and return its result (Horovod's output tensor)."""
    inner, finish = _lookup(handle, "synchronize")
    with _LOCK:
        _HANDLES.pop(handle, None)
    if isinstance(inner, list):  # a grouped call: finish waits for each part itself
        return finish(None)
    return finish(inner.wait() if inner is not None else None)
