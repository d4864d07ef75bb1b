"""Driving the CPU harness from Python: "device" memory and launches by name.

:class:`Harness` wraps the library :mod:`.build` makes. :class:`CpuMultiTensor`
mirrors :class:`hpcdl.kernels.fusion.MultiTensor` (tables in device memory, the
same head arguments), and every launch takes the argument tuples of
:mod:`hpcdl.kernels.launch_args`, the ones the GPU path passes.

Imports nothing but NumPy and the kernels' layout, so a process with a
sanitizer runtime preloaded can use it without hpcdl's MPI side (see check.py).
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Sequence

import numpy as np

from ..launch_args import THREADS, head_args
from ..layout import FusionLayout

__all__ = ["HarnessError", "Harness", "CpuMultiTensor"]

_CTYPE = {np.dtype(np.uint64): ctypes.c_uint64, np.dtype(np.int64): ctypes.c_int64,
          np.dtype(np.int32): ctypes.c_int32, np.dtype(np.float32): ctypes.c_float}


class HarnessError(RuntimeError):
    """A launch the harness refused or a fault it detected (barrier, shuffle, hang)."""


class Harness:
    def __init__(self, lib: Path | str) -> None:
        self.path = Path(lib)
        self.lib = ctypes.CDLL(str(lib))
        self.lib.hpcdl_cpu_kernel_names.restype = ctypes.c_char_p
        self.lib.hpcdl_cpu_error.restype = ctypes.c_char_p
        self.lib.hpcdl_cpu_alloc.restype = ctypes.c_void_p
        self.lib.hpcdl_cpu_alloc.argtypes = [ctypes.c_ulonglong, ctypes.c_uint]
        self.lib.hpcdl_cpu_free.argtypes = [ctypes.c_void_p]
        self.lib.hpcdl_cpu_launch.argtypes = [
            ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
            ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_ulonglong), ctypes.c_int]
        self._live: list[int] = []

    def kernel_names(self) -> list[str]:
        return self.lib.hpcdl_cpu_kernel_names().decode().split(";")

    # -- device memory ----------------------------------------------------------
    def alloc(self, nbytes: int, misalign: int = 0) -> int:
        """Exactly ``nbytes`` ending at the allocation's end, ``misalign`` bytes past 16."""
        ptr = self.lib.hpcdl_cpu_alloc(nbytes, misalign)
        if not ptr:
            raise MemoryError(f"harness: cannot allocate {nbytes} bytes")
        self._live.append(ptr)
        return ptr

    def upload(self, a: np.ndarray, misalign: int = 0) -> int:
        a = np.ascontiguousarray(a)
        ptr = self.alloc(a.nbytes, misalign)
        self.write(ptr, a)
        return ptr

    def write(self, ptr: int, a: np.ndarray) -> None:
        a = np.ascontiguousarray(a)
        ctypes.memmove(ptr, a.ctypes.data, a.nbytes)

    def download(self, ptr: int, count: int, dtype: np.dtype) -> np.ndarray:
        out = np.empty(count, dtype)
        ctypes.memmove(out.ctypes.data, ptr, out.nbytes)
        return out

    def free_all(self) -> None:
        for ptr in self._live:
            self.lib.hpcdl_cpu_free(ptr)
        self._live.clear()

    # -- launches -----------------------------------------------------------------
    def launch(self, name: str, grid: int, args: tuple, block: int = THREADS, seed: int = 0) -> None:
        """``name<<<grid, block>>>(*args)``; args are NumPy scalars, as CuPy takes them."""
        vals = []
        for i, a in enumerate(args):
            ct = _CTYPE.get(np.asarray(a).dtype)
            if ct is None:
                raise TypeError(f"{name}: argument {i} has type {type(a).__name__}")
            vals.append(ct(a.item() if hasattr(a, "item") else a))
        ptrs = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(v) for v in vals])
        sizes = (ctypes.c_ulonglong * len(vals))(*[ctypes.sizeof(v) for v in vals])
        if self.lib.hpcdl_cpu_launch(name.encode(), grid, block, seed, ptrs, sizes, len(vals)):
            raise HarnessError(f"{name}<<<{grid}, {block}>>>: "
                               f"{self.lib.hpcdl_cpu_error().decode()}")


class CpuMultiTensor:
    """Tensors uploaded to harness memory with their layout's tables (fusion.MultiTensor's twin).

    ``misalign[i]`` bytes shift tensor ``i`` off 16-byte alignment (0: aligned).
    """

    def __init__(self, h: Harness, srcs: Sequence[np.ndarray], layout: FusionLayout,
                 misalign: Sequence[int] | None = None) -> None:
        self.h = h
        self.layout = layout
        self.misalign = list(misalign) if misalign is not None else [0] * len(srcs)
        self.ptrs = [h.upload(np.ravel(s), m) for s, m in zip(srcs, self.misalign)]
        self.tables = (h.upload(layout.tensor_table(self.ptrs).view(np.uint8)),
                       h.upload(layout.chunk_table.view(np.uint8)))

    def head(self) -> tuple:
        return head_args(*self.tables, self.layout.nchunks, self.layout.chunk_elems)

    def tensors(self) -> list[np.ndarray]:
        """The tensors' current contents, flat."""
        return [self.h.download(p, n, d) for p, n, d in
                zip(self.ptrs, self.layout.numels, self.layout.dtypes)]
