"""FP16 compression with per-chunk scales agreed across ranks, and error feedback.

Plain ``x.half()`` overflows to inf above 65504 and flushes magnitudes below
about 6e-8 to zero; gradients routinely leave that window. Here each chunk of
``chunk_size`` elements gets a power-of-two scale ``s`` chosen from the chunk's
max |x| *over all ranks* (``m``): the largest ``2**k`` with ``m * world * 2**k
<= 2**15``. So

* no rank's value and no partial sum of ``world`` of them can exceed 2**15
  (half of fp16's range: room for the rounding of each step of a ring or tree);
* the largest values sit just under 2**15 / world, so a value ``2**29 / world``
  times smaller than its chunk's max is still a normal fp16 number;
* scaling by a power of two is exact, so ``decompress`` adds no error.

Error feedback (``error_feedback=True``): what rounding lost this step
(``x + r - fp16(x + r) / s``, per element, float32) is kept per tensor and
added back at the next ``compress``, so the error does not accumulate over
steps. A step with inf/NaN zeroes the residual there (a skipped AMP step must
not poison later ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..collectives import allreduce
from ..context import get_context
from ..errors import DtypeError, InvalidArgumentError
from ..kernels import fusion, reference
from ..kernels.layout import DEFAULT_CHUNK_ELEMS, DTYPE_CODES, FusionLayout, check_chunk_elems
from ..ops import TORCH_DTYPES

__all__ = ["FP16Compressor", "FP16Context"]


@dataclass(frozen=True)
class FP16Context:
    """What ``decompress`` needs: the input's dtype and shape, and the chunk scales."""

    dtype: Any          # numpy or torch dtype of the input
    shape: tuple[int, ...]
    scales: Any         # float32 per chunk, same kind and device as the payload
    chunk_size: int
    path: str           # "numpy" | "torch" | "kernels"


def _kind(t: Any) -> str:
    if isinstance(t, np.ndarray):
        return "numpy"
    module = type(t).__module__.split(".")[0]
    if module == "torch":
        return "torch"
    if module == "cupy":
        return "cupy"
    raise DtypeError(f"cannot compress a {type(t).__module__}.{type(t).__qualname__}; pass a "
                     "numpy array, a torch tensor or a cupy array", op="compress")


def _kernels_usable(t: Any, kind: str) -> bool:
    """The CUDA kernels apply: device memory, a kernel dtype, and a usable CuPy."""
    if kind == "torch":
        if t.device.type != "cuda" or TORCH_DTYPES.get(str(t.dtype)) not in DTYPE_CODES:
            return False
    elif kind != "cupy" or np.dtype(t.dtype) not in DTYPE_CODES:
        return False
    try:
        import cupy

        return bool(cupy.is_available())
    except Exception:  # no CuPy: the torch path does the same math
        return False


class FP16Compressor:
    """Float16 payload, per-chunk power-of-two scales, optional error feedback."""

    #: ``compress`` agrees on the scales with an allreduce of max over ``comm``
    collective = True

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_ELEMS, error_feedback: bool = False,
                 comm: Any = None) -> None:
        self.chunk_size = check_chunk_elems(chunk_size, "FP16Compressor")
        self.error_feedback = bool(error_feedback)
        self._comm = comm
        self._residuals: dict[Any, Any] = {}

    def __repr__(self) -> str:
        return (f"FP16Compressor(chunk_size={self.chunk_size}, "
                f"error_feedback={self.error_feedback})")

    @property
    def comm(self) -> Any:
        if self._comm is None:
            self._comm = get_context().comm
        return self._comm

    def bind(self, comm: Any) -> None:
        """Agree on scales over ``comm`` (``DistributedOptimizer`` binds its own): an error
        if this compressor was built for another communicator."""
        if self._comm is None:
            self._comm = comm
        elif self._comm is not comm:
            raise InvalidArgumentError(f"FP16Compressor was built with comm={self._comm!r} but "
                                       f"is used over {comm!r}: the scale agreement would run "
                                       "on a different group than the reduction",
                                       rank=getattr(comm, "rank", None), op="compress")

    def reset(self) -> None:
        """Forget every error-feedback residual."""
        self._residuals.clear()

    def state_dict(self) -> dict[str, Any]:
        """The error-feedback residuals of named tensors, as CPU torch tensors (what
        ``hpcdl.checkpoint`` saves per rank; unnamed ones are keyed by an address that
        means nothing after a restart and are left out)."""
        import torch

        out: dict[str, Any] = {}
        for key, r in self._residuals.items():
            if not isinstance(key, str):
                continue
            if isinstance(r, np.ndarray):
                out[key] = {"kind": "numpy", "value": torch.from_numpy(r.copy())}
            elif isinstance(r, torch.Tensor):
                out[key] = {"kind": "torch", "device": r.device.type,
                            "value": r.detach().cpu().clone()}
            else:  # a CuPy array
                out[key] = {"kind": "cupy", "value": torch.from_numpy(r.get())}
        return {"error_feedback": self.error_feedback, "residuals": out}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s residuals (onto this process's current GPU when
        they were on one)."""
        import torch

        self._residuals.clear()
        for key, item in state.get("residuals", {}).items():
            value = item["value"]
            if item["kind"] == "numpy":
                self._residuals[key] = value.numpy().copy()
            elif item["kind"] == "torch":
                device = (torch.device("cuda", torch.cuda.current_device())
                          if item.get("device") == "cuda" else torch.device("cpu"))
                self._residuals[key] = value.to(device)
            else:
                import cupy

                self._residuals[key] = cupy.asarray(value.numpy())

    # -- the contract -----------------------------------------------------------
    def compress(self, tensor: Any, *, name: str | None = None) -> tuple[Any, FP16Context]:
        """Collective over ``comm``: ``(float16 payload, ctx)``; see the module docstring."""
        kind = _kind(tensor)
        if kind == "numpy":
            return self._compress_numpy(tensor, name)
        if _kernels_usable(tensor, kind):
            return self._compress_kernels(tensor, kind, name)
        if kind == "torch":
            return self._compress_torch(tensor, name)
        raise DtypeError(f"cupy array of dtype {np.dtype(tensor.dtype).name} needs a usable "
                         "GPU and a float32/float16/bfloat16 dtype", op="compress")

    def decompress(self, payload: Any, ctx: FP16Context) -> Any:
        """The sum the payload holds, in the original dtype and shape."""
        if ctx.path == "numpy":
            out = np.empty(ctx.shape, ctx.dtype)
            reference.dequantize_fp16(np.ravel(payload), ctx.scales, [out],
                                      self._layout(out.size, ctx.dtype))
            return out
        if ctx.path == "torch":
            return self._decompress_torch(payload, ctx)
        return self._decompress_kernels(payload, ctx)

    # -- helpers ------------------------------------------------------------------
    def _layout(self, n: int, dtype: Any) -> FusionLayout:
        return FusionLayout((int(n),), (np.dtype(np.float32),), self.chunk_size)

    def _key(self, name: str | None, ptr: int, shape: tuple, dtype: Any) -> Any:
        return name if name is not None else (ptr, tuple(shape), str(dtype))

    def _allreduce_max(self, maxabs: Any) -> None:
        allreduce(maxabs, op="max", comm=self.comm)

    def _check_float(self, dtype: Any) -> None:
        name = str(dtype).replace("torch.", "")
        if name not in ("float64", "float32", "float16", "bfloat16"):
            raise DtypeError(f"FP16Compressor compresses floating tensors, got {name}",
                             rank=getattr(self._comm, "rank", None), op="compress")

    # -- NumPy: the reference functions themselves --------------------------------
    def _compress_numpy(self, x: np.ndarray, name: str | None) -> tuple[Any, FP16Context]:
        self._check_float(x.dtype)
        flat = np.ravel(x)
        layout = self._layout(flat.size, x.dtype)
        maxabs = reference.chunk_absmax([flat], layout)
        if flat.size:
            self._allreduce_max(maxabs)
        residual = None
        if self.error_feedback:
            key = self._key(name, x.ctypes.data, x.shape, x.dtype)
            residual = self._residuals.get(key)
            if residual is None or residual.size != flat.size:
                residual = self._residuals[key] = np.zeros(flat.size, np.float32)
        payload, scales = reference.quantize_fp16([flat], layout, maxabs, self.comm.size,
                                                  residual)
        return payload.reshape(x.shape), FP16Context(x.dtype, x.shape, scales, self.chunk_size,
                                                     "numpy")

    # -- torch (CPU, or CUDA without CuPy): torch ops, same math (fp16_torch.py) -------
    def _compress_torch(self, t: Any, name: str | None) -> tuple[Any, FP16Context]:
        import torch

        from . import fp16_torch

        self._check_float(t.dtype)
        if not t.is_contiguous():
            t = t.contiguous()
        v = t.detach().reshape(-1).to(torch.float32)
        n = v.numel()
        maxabs = fp16_torch.chunk_maxabs(v, self.chunk_size)
        if n:
            self._allreduce_max(maxabs)
        scales_np = reference.fp16_scales(maxabs.cpu().numpy(), self.comm.size)
        scales = torch.from_numpy(scales_np).to(t.device)
        r = None
        if self.error_feedback:
            key = self._key(name, t.data_ptr(), tuple(t.shape), t.dtype)
            r = self._residuals.get(key)
            if r is None or r.numel() != n or r.device != t.device:
                r = self._residuals[key] = torch.zeros(n, dtype=torch.float32, device=t.device)
        q = fp16_torch.quantize(v, scales, self.chunk_size, r)
        return q.view(t.shape), FP16Context(t.dtype, tuple(t.shape), scales, self.chunk_size,
                                            "torch")

    def _decompress_torch(self, payload: Any, ctx: FP16Context) -> Any:
        from . import fp16_torch

        return fp16_torch.dequantize(payload, ctx.scales, ctx.chunk_size,
                                     ctx.dtype).view(ctx.shape)

    # -- CUDA kernels (torch CUDA tensors, CuPy arrays) ---------------------------
    def _new(self, like: Any, kind: str, n: int, dtype: str) -> Any:
        if kind == "torch":
            import torch

            return torch.empty(n, dtype=getattr(torch, dtype), device=like.device)
        import cupy

        with cupy.cuda.Device(like.device.id):
            return cupy.empty(n, dtype=dtype)

    def _compress_kernels(self, t: Any, kind: str, name: str | None) -> tuple[Any, FP16Context]:
        if kind == "torch":
            t = t.detach().contiguous()
            ptr, shape, dtype, n = t.data_ptr(), tuple(t.shape), t.dtype, t.numel()
        else:
            if not t.flags.c_contiguous:
                raise InvalidArgumentError("the cupy array must be C-contiguous", op="compress")
            ptr, shape, dtype, n = t.data.ptr, tuple(t.shape), t.dtype, t.size
        ce = self.chunk_size
        nchunks = -(-n // ce)
        maxabs = self._new(t, kind, nchunks, "float32")
        payload = self._new(t, kind, n, "float16")
        scales = self._new(t, kind, nchunks, "float32")
        if n:
            fusion.chunk_absmax([t], maxabs, chunk_elems=ce)
            self._allreduce_max(maxabs)
        residual = None
        if self.error_feedback:
            key = self._key(name, ptr, shape, dtype)
            residual = self._residuals.get(key)
            if residual is None or int(residual.numel() if kind == "torch" else residual.size) != n:
                residual = self._new(t, kind, n, "float32")
                residual[...] = 0
                self._residuals[key] = residual
        if n:
            fusion.quantize_fp16([t], maxabs, self.comm.size, payload, scales, residual,
                                 chunk_elems=ce)
        return payload.reshape(shape), FP16Context(dtype, shape, scales, ce, "kernels")

    def _decompress_kernels(self, payload: Any, ctx: FP16Context) -> Any:
        kind = _kind(payload)
        if kind == "torch":
            import torch

            out = torch.empty(ctx.shape, dtype=ctx.dtype, device=payload.device)
            n = out.numel()
        else:
            import cupy

            with cupy.cuda.Device(payload.device.id):
                out = cupy.empty(ctx.shape, dtype=ctx.dtype)
            n = out.size
        if n:
            fusion.dequantize_fp16(payload.reshape(-1), ctx.scales, [out],
                                   chunk_elems=ctx.chunk_size)
        return out
