"""The multi-tensor layout shared by the pack/unpack/quantize kernels and their references.

A layout is N tensors (element counts and dtypes) placed back to back in one
flat fusion buffer: tensor ``i`` occupies ``[offsets[i], offsets[i] + numels[i])``.
Each tensor is cut into chunks of ``chunk_elems`` elements; the *chunk table*
lists ``(tensor, chunk)`` pairs, tensors in order. A GPU block works on one
chunk (no per-element search for the owning tensor), and FP16 compression
keeps one scale per chunk-table entry, so for a single tensor chunk ``c`` is
elements ``[c * chunk_elems, (c + 1) * chunk_elems)``.

The two NumPy record types below mirror ``HpcdlTensor`` / ``HpcdlChunk`` in
``common.cuh`` field for field.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import DtypeError, InvalidArgumentError
from ..ops import KERNEL_DTYPES, SUPPORTED_DTYPES, dtype_name

__all__ = ["DTYPE_CODES", "TENSOR_DESC", "CHUNK_DESC", "DEFAULT_CHUNK_ELEMS", "FusionLayout",
           "make_layout", "check_chunk_elems"]

#: dtypes the kernels read and write, by their code in common.cuh
DTYPE_CODES: dict[np.dtype, int] = {SUPPORTED_DTYPES[name]: code
                                    for code, name in enumerate(KERNEL_DTYPES)}
TENSOR_DESC = np.dtype([("ptr", "<u8"), ("offset", "<i8"), ("numel", "<i8"), ("dtype", "<i4"),
                        ("pad", "<i4")])
CHUNK_DESC = np.dtype([("tensor", "<i4"), ("chunk", "<i4")])
#: 8192 elements: 4 to 8 vector rounds of a 256-thread block, few enough blocks
#: for ResNet-50's 25.6 M values (about 3,200), fine enough for FP16 scales.
DEFAULT_CHUNK_ELEMS = 8192


def check_chunk_elems(chunk_elems: int, op: str = "layout") -> int:
    # A multiple of 8 keeps every chunk of a tensor at the 16-byte alignment of its first.
    if not isinstance(chunk_elems, (int, np.integer)) or chunk_elems <= 0 or chunk_elems % 8 \
            or chunk_elems >= 2**31:
        raise InvalidArgumentError(f"chunk_elems={chunk_elems!r} must be a positive multiple of 8 "
                                   "below 2**31", op=op)
    return int(chunk_elems)


@dataclass(frozen=True)
class FusionLayout:
    numels: tuple[int, ...]
    dtypes: tuple[np.dtype, ...]
    chunk_elems: int
    offsets: tuple[int, ...] = field(init=False)
    total: int = field(init=False)

    def __post_init__(self) -> None:
        offsets = np.concatenate([[0], np.cumsum(self.numels, dtype=np.int64)])
        object.__setattr__(self, "offsets", tuple(int(o) for o in offsets[:-1]))
        object.__setattr__(self, "total", int(offsets[-1]))

    @functools.cached_property
    def chunks_per_tensor(self) -> np.ndarray:
        return -(-np.asarray(self.numels, dtype=np.int64) // self.chunk_elems)

    @property
    def nchunks(self) -> int:
        return int(self.chunks_per_tensor.sum())

    @functools.cached_property
    def chunk_table(self) -> np.ndarray:
        """``(tensor, chunk)`` records, tensors in order, chunks in order."""
        per = self.chunks_per_tensor
        table = np.empty(int(per.sum()), CHUNK_DESC)
        table["tensor"] = np.repeat(np.arange(len(per), dtype=np.int32), per)
        starts = np.concatenate([[0], np.cumsum(per)[:-1]]).astype(np.int64)
        table["chunk"] = np.arange(table.size, dtype=np.int64) - np.repeat(starts, per)
        return table

    @functools.cached_property
    def chunk_starts(self) -> np.ndarray:
        """Index of each tensor's first entry in the chunk table."""
        return np.concatenate([[0], np.cumsum(self.chunks_per_tensor)[:-1]]).astype(np.int64)

    def tensor_table(self, ptrs: Sequence[int]) -> np.ndarray:
        """The device-side ``HpcdlTensor`` records for tensors at ``ptrs``."""
        table = np.zeros(len(self.numels), TENSOR_DESC)
        table["ptr"] = np.asarray(ptrs, dtype=np.uint64)
        table["offset"] = self.offsets
        table["numel"] = self.numels
        table["dtype"] = [DTYPE_CODES[d] for d in self.dtypes]
        return table


@functools.lru_cache(maxsize=256)
def _layout(numels: tuple[int, ...], dtypes: tuple[np.dtype, ...], chunk_elems: int) -> FusionLayout:
    return FusionLayout(numels, dtypes, chunk_elems)


def make_layout(numels: Sequence[int], dtypes: Sequence[np.dtype],
                chunk_elems: int = DEFAULT_CHUNK_ELEMS, *, op: str = "layout") -> FusionLayout:
    """A (cached) layout; raises :class:`DtypeError` for a dtype the kernels do not handle."""
    dts = tuple(np.dtype(d) for d in dtypes)
    for i, d in enumerate(dts):
        if d not in DTYPE_CODES:
            raise DtypeError(f"tensor {i} has dtype {dtype_name(d)}; the fusion kernels take "
                             "float32, float16 and bfloat16", op=op)
    per = -(-np.asarray(numels, dtype=np.int64) // max(int(chunk_elems), 1))
    if per.size and int(per.max()) >= 2**31:
        raise InvalidArgumentError("a tensor has 2**31 chunks or more; raise chunk_elems", op=op)
    return _layout(tuple(int(n) for n in numels), dts, check_chunk_elems(chunk_elems, op))
