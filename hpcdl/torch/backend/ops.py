"""torch reduce ops and dtypes -> what hpcdl or MPI can do with them.

Reductions take hpcdl's own collectives (its algorithms, ``avg``, float16 and
bfloat16 upcasting, host staging of CUDA tensors) whenever hpcdl accepts the
dtype and the op. MPI can also reduce the small integer types, bool and the
bitwise ops that hpcdl's API does not expose; those go to mpi4py directly on a
host view. Anything else raises :class:`~hpcdl.errors.DtypeError` naming the
op, the dtype and the rank, before any rank starts communicating.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from mpi4py import MPI

from ...errors import DtypeError, InvalidArgumentError
from ...ops import ReduceOp, torch_dtypes

__all__ = ["torch_op", "hpcdl_op", "mpi_op", "mpi_type", "host_bytes", "host_array",
           "dense", "write_back", "on_dense", "check_tensor", "HPCDL_DTYPES"]

_RED = dist.ReduceOp.RedOpType

#: torch dtypes hpcdl's collectives accept (its SUPPORTED_DTYPES, spelled for torch).
HPCDL_DTYPES = frozenset(torch_dtypes())

_HPCDL_OPS = {_RED.SUM: ReduceOp.SUM, _RED.AVG: ReduceOp.AVG, _RED.MIN: ReduceOp.MIN,
              _RED.MAX: ReduceOp.MAX, _RED.PRODUCT: ReduceOp.PROD,
              _RED.PREMUL_SUM: ReduceOp.SUM}  # the factor is applied before the sum

_MPI_OPS = {_RED.SUM: MPI.SUM, _RED.MIN: MPI.MIN, _RED.MAX: MPI.MAX, _RED.PRODUCT: MPI.PROD,
            _RED.BAND: MPI.BAND, _RED.BOR: MPI.BOR, _RED.BXOR: MPI.BXOR,
            _RED.PREMUL_SUM: MPI.SUM}

# Element types MPI reduces natively, beyond hpcdl's set. bool travels as uint8:
# MPI_C_BOOL only takes logical ops, and on 0/1 bytes min/max/prod/band/bor/bxor
# give exactly the boolean answers (sum would not, so it is refused below).
_MPI_TYPES = {torch.float64: MPI.DOUBLE, torch.float32: MPI.FLOAT, torch.int64: MPI.INT64_T,
              torch.int32: MPI.INT32_T, torch.int16: MPI.INT16_T, torch.int8: MPI.INT8_T,
              torch.uint8: MPI.UINT8_T, torch.bool: MPI.UINT8_T,
              torch.complex64: MPI.C_FLOAT_COMPLEX, torch.complex128: MPI.C_DOUBLE_COMPLEX}
_BITWISE = (_RED.BAND, _RED.BOR, _RED.BXOR)


def torch_op(op: Any) -> tuple[Any, float | None]:
    """(RedOpType, premul factor or None) of a torch ReduceOp / RedOpType."""
    kind = getattr(op, "op", op)
    factor = getattr(op, "factor", None) if kind == _RED.PREMUL_SUM else None
    return kind, factor


def hpcdl_op(kind: Any, dtype: torch.dtype) -> ReduceOp | None:
    """hpcdl's op for (torch op, dtype), or None when hpcdl's API cannot take it."""
    if dtype not in HPCDL_DTYPES or (kind == _RED.AVG and not dtype.is_floating_point):
        return None  # mpi_op then names what is wrong (AVG: MPI has no integer mean)
    return _HPCDL_OPS.get(kind)


def _name(kind: Any) -> str:
    return str(kind).rsplit(".", 1)[-1]


def mpi_op(kind: Any, dtype: torch.dtype, *, rank: int, op_name: str) -> MPI.Op:
    """The MPI op for a reduction hpcdl's API does not take, or a DtypeError."""
    mop = _MPI_OPS.get(kind)
    ok = mop is not None and dtype in _MPI_TYPES
    if ok and kind in _BITWISE and (dtype.is_floating_point or dtype.is_complex):
        ok = False
    if ok and dtype.is_complex and kind in (_RED.MIN, _RED.MAX):
        ok = False
    if ok and dtype == torch.bool and kind in (_RED.SUM, _RED.PREMUL_SUM):
        ok = False
    if not ok:
        hint = ("; AVG needs a floating dtype" if kind == _RED.AVG else "")
        raise DtypeError(f"reduce op {_name(kind)} on dtype {dtype} cannot be done by MPI "
                         f"or hpcdl{hint}", rank=rank, op=op_name)
    return mop


def mpi_type(dtype: torch.dtype) -> MPI.Datatype:
    return _MPI_TYPES[dtype]


def host_array(t: torch.Tensor) -> np.ndarray:
    """A flat NumPy view of a contiguous CPU tensor, typed for MPI reductions."""
    flat = t.detach().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    return flat.numpy()


def host_bytes(t: torch.Tensor) -> np.ndarray:
    """A flat uint8 NumPy view of a contiguous CPU tensor of any dtype (data movement)."""
    flat = t.detach().reshape(-1)
    if flat.numel() == 0:
        return np.empty(0, np.uint8)
    return flat.view(torch.uint8).numpy()


def dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when MPI can address it as one block, else a contiguous copy of it.

    torch's gloo copies strided inputs of its collectives the same way; an output
    passed through here is written back with :func:`write_back`.
    """
    # detach: the copy is a communication buffer, not a step autograd should record.
    return t if t.is_contiguous() else t.detach().contiguous()


def write_back(t: torch.Tensor, buf: torch.Tensor) -> None:
    """Copy the result in ``buf`` (from :func:`dense`) into the caller's strided ``t``."""
    if buf is not t:
        t.detach().copy_(buf)  # detach: a leaf that requires grad refuses in-place copy_


def on_dense(t: torch.Tensor, body: "Callable[[torch.Tensor], Any]", *,
             copy_back: bool = True) -> list[torch.Tensor]:
    """Run ``body`` on ``dense(t)`` and write the result back into ``t``; returns ``[t]``."""
    buf = dense(t)
    body(buf)
    if copy_back:
        write_back(t, buf)
    return [t]


def check_tensor(t: Any, *, rank: int, op_name: str, arg: str = "tensor") -> None:
    """Refuse what MPI cannot address at all: non-tensors, sparse, other devices.

    Strided (non-contiguous) tensors are accepted: the operations communicate
    through a contiguous copy (:func:`dense`) and write results back."""
    if not isinstance(t, torch.Tensor):
        raise InvalidArgumentError(f"argument '{arg}' is a {type(t).__name__}, expected a "
                                   "torch.Tensor", rank=rank, op=op_name)
    if t.layout != torch.strided:
        raise DtypeError(f"argument '{arg}' is a {t.layout} tensor; only dense tensors can be "
                         "communicated", rank=rank, op=op_name)
    if t.device.type not in ("cpu", "cuda"):
        raise InvalidArgumentError(f"argument '{arg}' is on {t.device}; the hpcdl backend "
                                   "takes cpu and cuda tensors", rank=rank, op=op_name)
