"""Start every rank from the root's model, optimizer state and Python objects.

    hpcdl.torch.broadcast_parameters(model.state_dict(), root_rank=0)
    hpcdl.torch.broadcast_optimizer_state(opt, root_rank=0)
    epoch = hpcdl.torch.broadcast_object(epoch, root_rank=0)

Tensors are fused: one flat buffer per dtype, one broadcast each, then copied
back in place, so a model with hundreds of tensors costs a handful of
collectives. Tensors whose dtype MPI cannot carry here (bool, uint8, ...)
travel pickled with :func:`broadcast_object`. Named inputs (a state dict, or
``named_parameters()``) are broadcast in sorted-name order, so the ranks agree
on the layout even if their dicts were built in different orders.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
import torch.utils._pytree as pytree

from ..collectives import broadcast
from ..collectives.handle import drain
from ..comm.base import Communicator
from ..errors import InvalidArgumentError
from ..ops import check_root, torch_dtypes
from ..runtime import default_comm

__all__ = ["broadcast_parameters", "broadcast_optimizer_state", "broadcast_object"]

_FUSABLE = torch_dtypes()  # hpcdl's own dtypes: fused into one broadcast per dtype



def _check_root(c: Communicator, root_rank: int, op: str) -> None:
    check_root(root_rank, c.size, rank=c.rank, op_name=op, arg="root_rank")


def broadcast_object(obj: Any, root_rank: int = 0, comm: Communicator | None = None) -> Any:
    """The root's ``obj`` (pickled), returned on every rank."""
    c = default_comm(comm)
    _check_root(c, root_rank, "broadcast_object")
    drain(c)  # after this rank's queued async collectives, as MPI ordering requires
    return c.bcast_object(obj if c.rank == root_rank else None, root_rank)


def _tensors(params: Any) -> list[torch.Tensor]:
    if isinstance(params, Mapping):
        return [params[k] for k in sorted(params)]
    items = list(params)
    if items and isinstance(items[0], tuple):
        return [t for _, t in sorted(items, key=lambda kv: kv[0])]
    return items


def broadcast_parameters(params: "Mapping[str, torch.Tensor] | Iterable[Any]",
                         root_rank: int = 0, comm: Communicator | None = None) -> None:
    """Overwrite ``params`` in place with the root's values.

    ``params``: a ``state_dict()``, ``named_parameters()``, or a list of tensors
    (in the same order on every rank).
    """
    c = default_comm(comm)
    _check_root(c, root_rank, "broadcast_parameters")
    tensors = [t for t in _tensors(params) if t is not None]
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise InvalidArgumentError(f"broadcast_parameters got a {type(t).__name__}; "
                                       "pass tensors, named_parameters() or a state_dict()",
                                       rank=c.rank, op="broadcast_parameters")
    if c.size == 1 or not tensors:
        return
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    odd: list[torch.Tensor] = []
    for t in tensors:
        if t.dtype in _FUSABLE:
            groups.setdefault((t.dtype, t.device), []).append(t)
        else:
            odd.append(t)
    # Every rank must run the same broadcasts: group by dtype in a fixed order;
    # the device is a local detail (host staging copes with mixed devices).
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for (dtype, _), ts in groups.items():
        by_dtype.setdefault(dtype, []).extend(ts)
    for dtype in _FUSABLE:
        ts = by_dtype.get(dtype)
        if not ts:
            continue
        device = ts[0].device
        with torch.no_grad():
            flat = torch.cat([t.detach().reshape(-1).to(device) for t in ts])
            broadcast(flat, root=root_rank, comm=c)
            parts = flat.split([t.numel() for t in ts])
            # one multi-tensor copy back (it also copies across devices)
            torch._foreach_copy_([t.detach() for t in ts],
                                 [p.view(t.shape) for p, t in zip(parts, ts)])
    if odd:
        values = broadcast_object([t.detach().cpu() for t in odd], root_rank, c)
        with torch.no_grad():
            for t, v in zip(odd, values):
                t.detach().copy_(v)


class _Slot:
    """Where a tensor was in the optimizer state: filled in after the broadcast."""

    __slots__ = ("index", "shape", "dtype")

    def __init__(self, index: int, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.index, self.shape, self.dtype = index, shape, dtype


def _strip(obj: Any, out: list[torch.Tensor]) -> Any:
    """``obj`` with every tensor replaced by a :class:`_Slot` (tensors appended to ``out``).

    torch's pytree walks the containers (dicts, lists, tuples, named tuples), in
    the same order on every rank since the structure is the root's, pickled.
    """
    def slot(leaf: Any) -> Any:
        if not isinstance(leaf, torch.Tensor):
            return leaf
        out.append(leaf.detach().cpu())
        return _Slot(len(out) - 1, tuple(leaf.shape), leaf.dtype)

    return pytree.tree_map(slot, obj)


def _fill(obj: Any, tensors: list[torch.Tensor]) -> Any:
    return pytree.tree_map(lambda v: tensors[v.index] if isinstance(v, _Slot) else v, obj)


def broadcast_optimizer_state(optimizer: Any, root_rank: int = 0,
                              comm: Communicator | None = None) -> None:
    """Load the root's ``optimizer.state_dict()`` (state and hyper-parameters) on every rank.

    The structure travels pickled; the state tensors (momenta, Adam moments)
    travel as fused broadcasts. Works for a torch optimizer or a
    :class:`~hpcdl.torch.DistributedOptimizer`.
    """
    c = default_comm(comm)
    _check_root(c, root_rank, "broadcast_optimizer_state")
    opt = getattr(optimizer, "optimizer", optimizer)
    if c.size == 1:
        return
    tensors: list[torch.Tensor] = []
    skeleton = _strip(opt.state_dict(), tensors) if c.rank == root_rank else None
    skeleton = broadcast_object(skeleton, root_rank, c)
    if c.rank != root_rank:
        slots = [v for v in pytree.tree_leaves(skeleton) if isinstance(v, _Slot)]
        tensors = [torch.empty(s.shape, dtype=s.dtype) for s in sorted(slots,
                                                                        key=lambda s: s.index)]
    broadcast_parameters(tensors, root_rank, c)
    if c.rank != root_rank:
        opt.load_state_dict(_fill(skeleton, tensors))
