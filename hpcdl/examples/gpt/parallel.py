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


def parallelize(name: str, model: GPT) -> Layout:
    """Split ``model`` (the same initial weights on every rank) as ``name`` says."""
    from torch.distributed.device_mesh import init_device_mesh

    rank, size = dist.get_rank(), dist.get_world_size()
    tp = _check(name, model.cfg, size, rank)
    if name == "dp":
        ddp = nn.parallel.DistributedDataParallel(model)
        return Layout(ddp, model, rank, size, 1)
    if name == "fsdp":
        _fully_shard(model)
        return Layout(model, model, rank, size, 1)
    if name == "tp":
        _tensor_parallel(model, init_device_mesh("cpu", (size,)))
        return Layout(model, model, 0, 1, size)
    mesh = init_device_mesh("cpu", (size // tp, tp), mesh_dim_names=("dp", "tp"))
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
