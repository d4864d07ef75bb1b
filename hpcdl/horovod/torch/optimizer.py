"""``hvd.DistributedOptimizer`` with Horovod's arguments, over ``hpcdl.torch.DistributedOptimizer``.

Mapping (docs/migrating-from-horovod.md):

* ``op=Average``/``Sum`` -> hpcdl's ``op="avg"``/``"sum"``; ``op=Adasum`` -> the
  :class:`AdasumOptimizer` below; other ops raise, as in Horovod.
* ``compression`` -> ``hpcdl.compression`` (``Compression.fp16`` is the scaled fp16).
* ``gradient_predivide_factor=f``: Horovod divides by ``f`` before the sum and
  multiplies by ``f/size`` after, to keep fp16 sums in range; the result is the
  average either way, and hpcdl's fp16 scales each chunk so the sum cannot
  overflow. Accepted (with Horovod's check that ``op`` is Average).
* ``groups=int`` / ``num_groups``: that many fusion buckets of equal size;
  ``groups=[[p, ...], ...]`` is validated and fusion stays by size (the groups only
  change how Horovod fuses, never the values). ``HOROVOD_FUSION_THRESHOLD``
  (bytes) sets the bucket size as in Horovod.
* ``sparse_as_dense``: gradients are reduced dense (hpcdl has no sparse allreduce).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Iterable

import torch

from ...errors import InvalidArgumentError
from ...torch import DEFAULT_FUSION_MB
from ...torch import DistributedOptimizer as _HpcdlOptimizer
from .adasum_optimizer import AdasumOptimizer
from .compression import Compression, hpcdl_compressor
from .process_sets import ProcessSet, resolve
from .reduce import Adasum, Average, Sum

__all__ = ["DistributedOptimizer"]


def _fusion_mb(optimizer: torch.optim.Optimizer, groups: Any, rank: int) -> float:
    if isinstance(groups, int) and not isinstance(groups, bool):
        if groups < 0:
            raise InvalidArgumentError("groups should be a non-negative integer or a list of "
                                       "lists of torch.Tensor", rank=rank,
                                       op="DistributedOptimizer")
        if groups > 0:
            total = sum(p.numel() * p.element_size() for g in optimizer.param_groups
                        for p in g["params"] if p.requires_grad)
            return max(total / groups / 2**20, 1e-6)
    elif groups is not None:
        seen: set[int] = set()
        for group in groups:
            for p in group:
                if not isinstance(p, torch.Tensor):
                    raise InvalidArgumentError("groups must consist of torch.Tensor",
                                               rank=rank, op="DistributedOptimizer")
                if id(p) in seen:
                    raise InvalidArgumentError("a parameter can only appear once in groups",
                                               rank=rank, op="DistributedOptimizer")
                seen.add(id(p))
    env = os.environ.get("HOROVOD_FUSION_THRESHOLD")
    if env:
        return int(env) / 2**20
    return DEFAULT_FUSION_MB


def DistributedOptimizer(optimizer: torch.optim.Optimizer,
                         named_parameters: Iterable[tuple[str, torch.Tensor]] | None = None,
                         compression: Any = Compression.none, backward_passes_per_step: int = 1,
                         op: int = Average, gradient_predivide_factor: float = 1.0,
                         num_groups: int = 0, groups: Any = None, sparse_as_dense: bool = False,
                         process_set: ProcessSet | None = None) -> Any:
    """Wrap ``optimizer`` so ``step()`` uses gradients reduced over the ranks (Horovod's API)."""
    ps = resolve(process_set, "DistributedOptimizer")
    rank = ps.comm.rank
    if gradient_predivide_factor != 1.0 and op != Average:
        raise InvalidArgumentError("gradient_predivide_factor not supported with op != Average",
                                   rank=rank, op="DistributedOptimizer")
    if num_groups != 0:
        warnings.warn("Parameter `num_groups` has been replaced by `groups` and will be removed "
                      "in v0.23.0.", DeprecationWarning, stacklevel=2)
        if groups is None:
            groups = num_groups
    if backward_passes_per_step <= 0:
        raise InvalidArgumentError("backward_passes_per_step must be > 0", rank=rank,
                                   op="DistributedOptimizer")
    if op == Adasum:
        return AdasumOptimizer(optimizer, named_parameters, compression,
                               backward_passes_per_step, ps.comm)
    if op not in (Average, Sum):
        raise InvalidArgumentError(f"op={op!r}: gradients are reduced with hvd.Average, "
                                   "hvd.Sum or hvd.Adasum", rank=rank, op="DistributedOptimizer")
    return _HpcdlOptimizer(optimizer, named_parameters=named_parameters,
                           compression=hpcdl_compressor(compression, ps.comm),
                           fusion_threshold_mb=_fusion_mb(optimizer, groups, rank),
                           backward_passes_per_step=backward_passes_per_step,
                           op="avg" if op == Average else "sum", comm=ps.comm)
