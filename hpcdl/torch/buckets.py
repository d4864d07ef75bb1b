"""Gradient buckets: the fusion layout shared by every rank, and pack/unpack.

Parameters are taken in *reverse registration order* (the reverse of
``model.named_parameters()``), the order in which the backward pass produces
their gradients, as DDP does (a name sort would put ``layer.10`` before
``layer.2``), and cut into buckets of at most ``threshold_bytes`` each, one
dtype and one device per bucket. The layout is a pure function of that order
and of the shapes and dtypes, so it is identical on every rank that holds the
same model, and buckets are always *launched* in index order (see
``optimizer.py``): MPI requires every rank to start collectives in the same
order, and autograd does not promise the same hook order on every rank.

Each bucket owns one flat buffer. Packing copies the gradients into it (zeros
for a parameter that got no gradient); unpacking copies the reduced values
back into ``.grad`` and applies the averaging scale in the same pass.

On CUDA the multi-tensor kernels of :mod:`hpcdl.kernels.fusion` pack and
unpack (with the averaging scale fused) in one launch when CuPy can run them;
otherwise (and always on the CPU) plain torch ops do it:
``torch.cat(..., out=flat)`` is one pass per bucket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..ops import KERNEL_DTYPES, torch_dtypes

__all__ = ["Bucket", "build_buckets", "layout_signature", "pack", "unpack"]


@dataclass
class Bucket:
    """Parameters whose gradients travel together in one flat buffer."""

    index: int
    names: list[str]
    params: list[torch.Tensor] = field(repr=False)
    offsets: list[int]        # start of each parameter in ``flat`` (elements)
    numel: int
    dtype: torch.dtype
    device: torch.device
    flat: torch.Tensor | None = field(default=None, repr=False)
    views: list[torch.Tensor] = field(default_factory=list, repr=False)  # flat[o:o+n].view(shape)
    ready: int = 0            # parameters whose gradient is complete this step
    pending: Any = field(default=None, repr=False)  # the Handle in flight

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def allocate(self) -> None:
        """Create the flat buffer and the per-parameter views into it (once)."""
        self.flat = torch.zeros(self.numel, dtype=self.dtype, device=self.device)
        self.views = [self.flat[o:o + p.numel()].view(p.shape)
                      for o, p in zip(self.offsets, self.params)]


def build_buckets(named: Sequence[tuple[str, torch.Tensor]], threshold_bytes: int) -> list[Bucket]:
    """Cut ``named`` (name, parameter) pairs, in registration order, into buckets of at
    most ``threshold_bytes``, last registered first.

    ``threshold_bytes <= 0`` gives one bucket per parameter (no fusion). A
    parameter larger than the threshold gets a bucket of its own.
    """
    order = list(reversed(named))
    buckets: list[Bucket] = []
    open_by_kind: dict[tuple[torch.dtype, torch.device], Bucket] = {}
    for name, p in order:
        kind = (p.dtype, p.device)
        size = p.numel() * p.element_size()
        b = open_by_kind.get(kind)
        if b is None or threshold_bytes <= 0 or b.nbytes + size > threshold_bytes:
            if b is not None or threshold_bytes <= 0:
                open_by_kind.pop(kind, None)
            b = Bucket(len(buckets), [], [], [], 0, p.dtype, p.device)
            buckets.append(b)
            if threshold_bytes > 0:
                open_by_kind[kind] = b
        b.names.append(name)
        b.params.append(p)
        b.offsets.append(b.numel)
        b.numel += p.numel()
    for b in buckets:
        b.allocate()
    return buckets


def layout_signature(buckets: Sequence[Bucket]) -> list[list[tuple[str, tuple[int, ...], str]]]:
    """What must agree across ranks: per bucket, each parameter's name, shape and dtype."""
    return [[(n, tuple(p.shape), str(p.dtype).replace("torch.", "")) for n, p in
             zip(b.names, b.params)] for b in buckets]


def _gpu_kernels() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """hpcdl's multi-tensor pack/unpack (``hpcdl.kernels.fusion``), when CuPy can run them."""
    try:
        import cupy

        if not cupy.is_available():
            return None
        from ..kernels import fusion
    except Exception:  # noqa: BLE001 - no CuPy / no CUDA toolchain: the torch path
        return None
    return fusion.pack, fusion.unpack


_KERNELS: Any = "unprobed"
_KERNEL_DTYPES = torch_dtypes(KERNEL_DTYPES)
#: Tensors up to this many elements are unpacked by multi-tensor (``_foreach_*``) ops.
_FOREACH_MAX_NUMEL = 1 << 16


def kernels_for(bucket: Bucket, tensors: Sequence[torch.Tensor | None]) \
        -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """The CUDA kernels if they apply to these tensors (device, dtype, dense layout)."""
    global _KERNELS
    if bucket.device.type != "cuda" or bucket.dtype not in _KERNEL_DTYPES:
        return None
    if any(t is None or not t.is_contiguous() for t in tensors):
        return None
    if _KERNELS == "unprobed":
        _KERNELS = _gpu_kernels()
    return _KERNELS


def pack(bucket: Bucket) -> None:
    """Copy the bucket's gradients into its flat buffer; a missing gradient packs as zeros."""
    assert bucket.flat is not None
    grads = [p.grad if p.grad is not None else None for p in bucket.params]
    if all(g is not None for g in grads):
        k = kernels_for(bucket, grads)
        if k is not None:
            k[0](grads, bucket.flat)
            return
        if len(grads) == 1:
            bucket.flat.copy_(grads[0].reshape(-1))
        else:
            torch.cat([g.reshape(-1) for g in grads], out=bucket.flat)  # type: ignore[union-attr]
        return
    # one multi-tensor op each instead of a Python loop of small copies
    # one multi-tensor op each instead of a Python loop of small copies (they refuse
    # an empty list, and here at least one gradient is missing)
    torch._foreach_zero_([v for g, v in zip(grads, bucket.views) if g is None])
    have = [(v, g) for g, v in zip(grads, bucket.views) if g is not None]
    if have:
        torch._foreach_copy_([v for v, _ in have], [g for _, g in have])


def unpack(bucket: Bucket, reduced: torch.Tensor, scale: float) -> None:
    """``p.grad = reduced[slice] * scale`` for every parameter, in place.

    A parameter without a gradient gets one (zeros first), so every rank ends
    the step with the same set of gradients, whatever its own backward touched.
    """
    for p in bucket.params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in bucket.params]
    k = kernels_for(bucket, grads)
    if k is not None and reduced.dtype == bucket.dtype and reduced.is_contiguous():
        k[1](reduced, grads, scale=scale)
        return
    if reduced.dtype != bucket.dtype or reduced.device != bucket.device:
        reduced = reduced.to(dtype=bucket.dtype, device=bucket.device)
    # Small tensors (biases, norms) go through multi-tensor ops: one dispatch for all
    # instead of one per tensor. A large one keeps its own ``mul(out=)``: one pass over
    # memory, where copy-then-scale would be two. Measured on the CPU, scale 1/2,
    # against the per-tensor loop: 64 bias-sized tensors 2.0x, a 20-tensor CNN 2.6x
    # faster, a 12.6 M-element MLP unchanged (1.02x).
    small_dst: list[torch.Tensor] = []
    small_src: list[torch.Tensor] = []
    for g, o in zip(grads, bucket.offsets):
        n = g.numel()  # type: ignore[union-attr]
        src = reduced[o:o + n].view(g.shape)  # type: ignore[union-attr]
        if n <= _FOREACH_MAX_NUMEL:
            small_dst.append(g)  # type: ignore[arg-type]
            small_src.append(src)
        elif scale == 1.0:
            g.copy_(src)  # type: ignore[union-attr]
        else:
            torch.mul(src, scale, out=g)  # type: ignore[arg-type]
    if small_dst:
        torch._foreach_copy_(small_dst, small_src)
        if scale != 1.0:
            torch._foreach_mul_(small_dst, scale)
