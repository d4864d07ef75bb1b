"""Reduction operators and the dtypes hpcdl accepts.

MPI has no standard float16 or bfloat16 and no ``avg``. hpcdl therefore keeps
the operator and dtype decisions here, in one place:

* algorithms written in Python reduce with :func:`reduce_into`, which uses
  NumPy ufuncs; for float16/bfloat16 those compute in float32 and round once
  per step (NumPy's half loops and ml_dtypes' bfloat16 loops both do that).
  A float16/bfloat16 ``sum`` of a few thousand elements or more goes through
  torch's vectorised add when torch is already imported: the same float32
  add and one rounding, bit for bit, 30x (float16) and 5x (bfloat16) faster
  than NumPy's scalar half loops (measured on this VM's CPU, 550 k elements:
  4.4 ms vs 0.14 ms); this is what makes the ring of a float16 payload cheap;
* the native MPI path upcasts float16/bfloat16 to float32 before handing the
  data to MPI (see :func:`mpi_reducible`), so they are never reduced as raw
  bytes or misread as FLOAT;
* ``avg`` is a ``sum`` followed by :func:`finish_avg`.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Iterable
from typing import Any

import ml_dtypes
import numpy as np

from .errors import DtypeError, InvalidArgumentError

__all__ = ["ReduceOp", "SUPPORTED_DTYPES", "TORCH_DTYPES", "KERNEL_DTYPES", "torch_dtypes",
           "bfloat16", "parse_op", "check_dtype", "check_root", "reduce_into", "finish_avg",
           "mpi_reducible", "dtype_name", "CHUNK_BYTES"]

#: Piece size of the ring pipeline and of ``chunked`` (and of the cost model that
#: predicts them). Large enough that the per-message Python cost (~10 us) stays
#: small against the transfer, small enough to overlap and to keep each native
#: call's working set in cache (1 MiB and 2 MiB measured alike; 256 KiB was
#: slower: docs/algorithms.md).
CHUNK_BYTES = 1 << 20

bfloat16 = np.dtype(ml_dtypes.bfloat16)

#: Every dtype a collective accepts, by its canonical name.
SUPPORTED_DTYPES: dict[str, np.dtype] = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": bfloat16,
    "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64),
}
_HALF = (np.dtype(np.float16), bfloat16)

#: The same dtypes by the name torch gives them (``str(tensor.dtype)``): strings,
#: so that nothing here imports torch. :func:`torch_dtypes` makes torch dtypes.
TORCH_DTYPES: dict[str, np.dtype] = {f"torch.{name}": dt for name, dt in SUPPORTED_DTYPES.items()}
#: The dtypes the CUDA kernels read and write (hpcdl/kernels/layout.py numbers them).
KERNEL_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")


def torch_dtypes(names: Iterable[str] = tuple(SUPPORTED_DTYPES)) -> tuple[Any, ...]:
    """``torch.<name>`` for each of ``names`` (default: every supported dtype); imports torch."""
    import torch

    return tuple(getattr(torch, name) for name in names)


class ReduceOp(str, enum.Enum):
    SUM = "sum"
    AVG = "avg"
    MIN = "min"
    MAX = "max"
    PROD = "prod"

    def __str__(self) -> str:  # "sum", not "ReduceOp.SUM", in messages
        return self.value


_UFUNC = {ReduceOp.SUM: np.add, ReduceOp.AVG: np.add, ReduceOp.MIN: np.minimum,
          ReduceOp.MAX: np.maximum, ReduceOp.PROD: np.multiply}


def dtype_name(dtype: Any) -> str:
    return np.dtype(dtype).name


def parse_op(op: "str | ReduceOp", *, rank: int | None = None, op_name: str | None = None) -> ReduceOp:
    """Turn ``"sum"`` / ``ReduceOp.SUM`` into a :class:`ReduceOp`, or raise naming the choices."""
    if isinstance(op, ReduceOp):
        return op
    try:
        return ReduceOp(str(op).lower())
    except ValueError:
        choices = ", ".join(repr(o.value) for o in ReduceOp)
        raise InvalidArgumentError(f"unknown op {op!r}; choose one of {choices}",
                                   rank=rank, op=op_name) from None


def check_dtype(dtype: np.dtype, op: ReduceOp | None, *, rank: int | None = None,
                op_name: str | None = None) -> None:
    """Raise unless ``dtype`` is supported (and, for ``avg``, floating)."""
    if dtype not in SUPPORTED_DTYPES.values():
        if dtype.newbyteorder("=") in SUPPORTED_DTYPES.values():  # '>f4' is named float32 too
            raise DtypeError(f"dtype {dtype.str} has non-native byte order; convert it with "
                             "x.astype(x.dtype.newbyteorder('='))", rank=rank, op=op_name)
        names = ", ".join(SUPPORTED_DTYPES)
        raise DtypeError(f"dtype {dtype_name(dtype)} is not supported; use one of {names}",
                         rank=rank, op=op_name)
    if op is ReduceOp.AVG and dtype.kind == "i":
        raise DtypeError(f"op 'avg' needs a floating dtype, got {dtype_name(dtype)} "
                         "(use op='sum' and divide, to choose the rounding yourself)",
                         rank=rank, op=op_name)


def check_root(root: Any, size: int, *, rank: int | None = None, op_name: str | None = None,
               arg: str = "root", group: str = "this communicator") -> int:
    """``root`` as an int, or raise unless it is a rank of a group of ``size`` ranks.

    ``bool`` is refused although it is an ``int`` subclass: ``root=True`` is a
    mistake, not rank 1.
    """
    if (not isinstance(root, (int, np.integer)) or isinstance(root, (bool, np.bool_))
            or not 0 <= root < size):
        raise InvalidArgumentError(f"{arg}={root!r} is not a rank of {group} (0..{size - 1})",
                                   rank=rank, op=op_name)
    return int(root)


#: Below this many elements NumPy's half loop is as fast as a torch dispatch (~5 us).
_TORCH_HALF_MIN = 4096


def _torch_view(a: np.ndarray, torch: Any) -> Any:
    """``a`` as a torch tensor sharing its memory (bfloat16 through an int16 view)."""
    if a.dtype == bfloat16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def reduce_into(dst: np.ndarray, src: np.ndarray, op: ReduceOp) -> None:
    """``dst = dst (op) src`` elementwise, in place. ``avg`` reduces as ``sum``."""
    if (dst.dtype in _HALF and dst.size >= _TORCH_HALF_MIN and op in (ReduceOp.SUM, ReduceOp.AVG)
            and src.dtype == dst.dtype and src.shape == dst.shape
            and dst.flags.c_contiguous and src.flags.c_contiguous
            and dst.flags.writeable and src.flags.writeable):
        # Never imported here for this: only when the process already uses torch.
        torch = sys.modules.get("torch")
        if torch is not None:
            _torch_view(dst, torch).add_(_torch_view(src, torch))
            return
    _UFUNC[op](dst, src, out=dst)


def finish_avg(buf: np.ndarray, n: int) -> None:
    """Turn a sum over ``n`` ranks into the mean, in place."""
    if n != 1:
        # Multiply by the reciprocal in float64 then cast, so float16 sums that
        # fit do not overflow on the way (divide first is the other choice).
        np.multiply(buf, np.float64(1.0) / n, out=buf, casting="unsafe")


def mpi_reducible(dtype: np.dtype) -> np.dtype:
    """The dtype MPI reduces in: float32 for the half types, the dtype itself otherwise."""
    return np.dtype(np.float32) if dtype in _HALF else dtype


def is_half(dtype: np.dtype) -> bool:
    return dtype in _HALF
