"""Before each Horovod call: all ranks agree on shape, dtype and op, or all raise naming ranks.

Horovod's coordinator refuses mismatched tensors ("Mismatched allreduce tensor
shapes") on every rank; hpcdl's core checks across ranks only under
``HPCDL_DEBUG=1``. The adapter always checks, with one small object allgather
on the process set's ``meta`` communicator, and returns what every rank
declared (allgather and alltoall need the other ranks' first dimensions).
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import DtypeError, MismatchError
from ...ops import torch_dtypes

__all__ = ["agree", "wire_dtype", "describe"]

# dtypes hpcdl's collectives carry as they are; others travel widened and come back.
_NATIVE = torch_dtypes()
_WIDEN = {torch.uint8: torch.int32, torch.int8: torch.int32, torch.int16: torch.int32,
          torch.bool: torch.int32}


def wire_dtype(t: torch.Tensor, op: str, ps: Any) -> torch.dtype:
    """The dtype ``t`` travels in: itself, or int32 for the narrow integer types."""
    if t.dtype in _NATIVE:
        return t.dtype
    if t.dtype in _WIDEN:
        return _WIDEN[t.dtype]
    raise DtypeError(f"dtype {t.dtype} is not supported (use float16/32/64, bfloat16 or an "
                     "integer type)", rank=ps.comm.rank, size=ps.comm.size, op=op)


def describe(t: torch.Tensor) -> tuple[tuple[int, ...], str]:
    return tuple(t.shape), str(t.dtype).replace("torch.", "")


def agree(ps: Any, op: str, mine: dict[str, Any], same: tuple[str, ...]) -> list[dict]:
    """Allgather ``mine`` over the set; raise on every rank unless the ``same`` keys agree."""
    everyone = ps.meta.allgather_object(mine)
    for key in same:
        ref = everyone[0][key]
        bad = [r for r, d in enumerate(everyone) if d[key] != ref]
        if bad:
            detail = "; ".join(f"rank {r} has {everyone[r][key]}" for r in bad)
            raise MismatchError(f"mismatched {key}: rank 0 has {ref}; {detail}",
                                rank=ps.comm.rank, size=ps.comm.size, op=op)
    return everyone
