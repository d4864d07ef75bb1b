"""The four layouts of ``--parallel``: how the model is split over the ranks.

* ``dp``: DDP, every rank a whole model and a slice of the batch.
* ``fsdp``: FSDP2 (``fully_shard`` per block and at the root), a slice of the batch.
* ``tp``: tensor parallelism over every rank (``parallelize_module``: q/k/v and the
  MLP's first layer column-wise, the attention output and second layer row-wise);
  every rank sees the whole batch.
* ``fsdp-tp``: a (dp, tp) mesh with tp = 2: TP inside each pair of ranks, FSDP2
  across the pairs, each pair a slice of the batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .model import GPT, TP_PLAN_NAMES, Config

__all__ = ["LAYOUTS", "Layout", "parallelize", "full_parameters"]

LAYOUTS = ("dp", "fsdp", "tp", "fsdp-tp")


@dataclasses.dataclass
class Layout:
    model: nn.Module     # what to call: model(idx, targets) -> loss
    inner: GPT           # the GPT inside (named parameters without wrapper prefixes)
    dp_rank: int         # this rank's slice of the global batch ...
    dp_size: int         # ... out of this many
    tp_size: int


def _check(name: str, cfg: Config, size: int, rank: int) -> int:
    if name not in LAYOUTS:
        raise SystemExit(f"rank {rank}: --parallel {name!r}: choose one of {LAYOUTS}")
    tp = {"dp": 1, "fsdp": 1, "tp": size, "fsdp-tp": min(2, size)}[name]
    if name == "fsdp-tp" and size % tp:
        raise SystemExit(f"rank {rank}: --parallel fsdp-tp puts 2 ranks in each tensor-"
                         f"parallel pair; {size} ranks do not split into pairs")
    if cfg.heads % tp or (4 * cfg.dim) % tp:
        raise SystemExit(f"rank {rank}: --parallel {name}: {cfg.heads} heads and "
                         f"{4 * cfg.dim} MLP units must divide over {tp} tensor-parallel ranks")
    return tp


def _tensor_parallel(model: GPT, mesh: Any) -> None:
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                   parallelize_module)

    style = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
    plan = {f"blocks.{i}.{name}": style[kind]()
            for i in range(len(model.blocks)) for name, kind in TP_PLAN_NAMES.items()}
    parallelize_module(model, mesh, plan)


def _fully_shard(model: GPT, mesh: Any = None) -> None:
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def _mesh(shape: tuple[int, ...], backend: str | None) -> Any:
    """A CPU DeviceMesh of ``shape`` over ranks in order; with ``backend`` its groups are
    made explicitly with that backend (the benchmark runs gloo beside "hpcdl")."""
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

    names = ("dp", "tp") if len(shape) == 2 else None
    if backend is None:
        return init_device_mesh("cpu", shape, mesh_dim_names=names)
    grid = torch.arange(dist.get_world_size()).view(shape)
    rank = dist.get_rank()
    if len(shape) == 1:
        return DeviceMesh.from_group(dist.new_group(grid.tolist(), backend=backend), "cpu")
    mine = []
    for dim in (0, 1):  # every rank creates every group, in the same order
        lines = grid.transpose(0, 1) if dim == 0 else grid
        for line in lines.tolist():
            g = dist.new_group(line, backend=backend)
            if rank in line:
                mine.append(g)
    return DeviceMesh.from_group(mine, "cpu", mesh=grid, mesh_dim_names=names)


def parallelize(name: str, model: GPT, backend: str | None = None) -> Layout:
    """Split ``model`` (the same initial weights on every rank) as ``name`` says, over
    the default group's backend (or over new groups of ``backend``)."""
    rank, size = dist.get_rank(), dist.get_world_size()
    tp = _check(name, model.cfg, size, rank)
    if name == "dp":
        group = _mesh((size,), backend).get_group() if backend else None
        ddp = nn.parallel.DistributedDataParallel(model, process_group=group)
        return Layout(ddp, model, rank, size, 1)
    if name == "fsdp":
        _fully_shard(model, _mesh((size,), backend))
        return Layout(model, model, rank, size, 1)
    if name == "tp":
        _tensor_parallel(model, _mesh((size,), backend))
        return Layout(model, model, 0, 1, size)
    mesh = _mesh((size // tp, tp), backend)
    _tensor_parallel(model, mesh["tp"])
    _fully_shard(model, mesh["dp"])
    return Layout(model, model, rank // tp, size // tp, tp)


def full_parameters(inner: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter whole (DTensors gathered: collective), by name."""
    out = {}
    for key, p in inner.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[key] = full.detach().clone()
    return out
