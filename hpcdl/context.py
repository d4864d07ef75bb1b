"""Who am I: the default :class:`Context`, read by every layer that needs a communicator.

A leaf module. It holds the context but never starts MPI itself: the starter
(:func:`hpcdl.runtime.init`) is injected by :mod:`hpcdl.runtime` when that module
is imported, which ``import hpcdl`` always does first. So the collectives read
"the default communicator" from here without importing the module that also
starts MPI, the watchdog and the trace (that import used to close a circle
runtime -> collectives -> runtime).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import HpcdlError

__all__ = ["Context", "get_context", "default_comm", "is_initialized", "set_context",
           "set_starter"]


@dataclass
class Context:
    """What ``init()`` found. ``comm`` is the communicator collectives default to."""

    comm: Any                 # MPICommunicator over a Dup of COMM_WORLD
    local_comm: Any           # the ranks on this node
    cross_comm: Any           # the ranks with this local_rank, one per node
    rank: int
    size: int
    local_rank: int
    local_size: int
    node: int
    num_nodes: int
    layout_source: str        # how local_rank/node were decided
    gpu: int | None           # the CUDA device this rank is bound to
    gpu_count: int
    cuda_aware: bool
    cuda_aware_reason: str
    mpi_library: str
    thread_level: str
    launcher: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"Context(rank={self.rank}, size={self.size}, local_rank={self.local_rank}, "
                f"local_size={self.local_size}, node={self.node}, num_nodes={self.num_nodes}, "
                f"gpu={self.gpu}, cuda_aware={self.cuda_aware})")


_CONTEXT: Context | None = None
_STARTER: Callable[[], Context] | None = None


def set_starter(start: Callable[[], Context]) -> None:
    """Called by :mod:`hpcdl.runtime`: what :func:`get_context` runs on first use."""
    global _STARTER
    _STARTER = start


def set_context(ctx: Context) -> None:
    """Called by :func:`hpcdl.runtime.init` with the default context it made."""
    global _CONTEXT
    _CONTEXT = ctx


def is_initialized() -> bool:
    return _CONTEXT is not None


def get_context() -> Context:
    """The default context, initialising hpcdl on first use."""
    if _CONTEXT is not None:
        return _CONTEXT
    if _STARTER is None:  # only reachable by importing this module without the package
        raise HpcdlError("no hpcdl context and no starter: import hpcdl and call hpcdl.init()",
                         op="get_context")
    return _STARTER()


def default_comm(comm: Any = None) -> Any:
    """``comm`` itself, or the default context's communicator when it is ``None``."""
    return get_context().comm if comm is None else comm
