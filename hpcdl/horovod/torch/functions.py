"""``broadcast_parameters``, ``broadcast_optimizer_state``, ``broadcast_object``,
``allgather_object``: Horovod's signatures over ``hpcdl.torch``'s broadcasts."""

from __future__ import annotations

from typing import Any

from ...collectives.handle import drain
from ...torch import broadcast as _hb
from .process_sets import ProcessSet, resolve

__all__ = ["broadcast_parameters", "broadcast_optimizer_state", "broadcast_object",
           "allgather_object"]


def broadcast_parameters(params: Any, root_rank: int) -> None:
    """Overwrite ``params`` (state_dict, named_parameters or tensors) with the root's."""
    _hb.broadcast_parameters(params, root_rank=root_rank, comm=resolve(None,
                             "broadcast_parameters").comm)


def broadcast_optimizer_state(optimizer: Any, root_rank: int, model: Any = None) -> None:
    """Load the root's optimizer state and hyper-parameters on every rank.

    ``model`` is accepted for Horovod's signature; hpcdl does not need it
    (state tensors are created from the root's shapes, no dummy step).
    """
    _hb.broadcast_optimizer_state(optimizer, root_rank=root_rank,
                                  comm=resolve(None, "broadcast_optimizer_state").comm)


def broadcast_object(obj: Any, root_rank: int = 0, name: str | None = None,
                     process_set: ProcessSet | None = None) -> Any:
    """The root's ``obj`` (pickled) on every rank of the set."""
    return _hb.broadcast_object(obj, root_rank=root_rank,
                                comm=resolve(process_set, "broadcast_object").comm)


def allgather_object(obj: Any, name: str | None = None,
                     process_set: ProcessSet | None = None) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    ps = resolve(process_set, "allgather_object")
    drain(ps.comm)
    return ps.comm.allgather_object(obj)
