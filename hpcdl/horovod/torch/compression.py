"""``hvd.Compression.none`` / ``.fp16`` mapped onto ``hpcdl.compression``.

Horovod's fp16 compressor casts to half (values above 65504 become inf).
``Compression.fp16`` here is hpcdl's :class:`~hpcdl.compression.FP16Compressor`:
float16 on the wire too, with per-chunk power-of-two scales agreed across ranks,
so nothing overflows and small gradients keep their digits. It is collective
(one small max-allreduce per tensor), so it is built per communicator.
User-written compressors (a ``Compressor`` subclass with static
``compress``/``decompress``) are used as Horovod uses them: on the optimizer's
path they become hpcdl's one protocol through
:class:`hpcdl.compression.PlainCompressor` (no name, no bind, not collective).
"""

from __future__ import annotations

from typing import Any

from ...compression import FP16Compressor, NoneCompressor, as_compressor

__all__ = ["Compressor", "Compression", "NoneCompressor", "FP16Compressor", "hpcdl_compressor"]


class Compressor:
    """Horovod's base class: ``compress(t) -> (t, ctx)``, ``decompress(t, ctx) -> t``."""

    @staticmethod
    def compress(tensor: Any) -> tuple[Any, Any]:
        raise NotImplementedError  # abstract, as in Horovod: subclasses define it

    @staticmethod
    def decompress(tensor: Any, ctx: Any) -> Any:
        raise NotImplementedError  # abstract, as in Horovod: subclasses define it


class _NoneSpec(Compressor):
    """No compression (Horovod's ``Compression.none``)."""

    @staticmethod
    def compress(tensor: Any) -> tuple[Any, Any]:
        return tensor, None

    @staticmethod
    def decompress(tensor: Any, ctx: Any) -> Any:
        return tensor


class _FP16Spec(Compressor):
    """Float16 on the wire (Horovod's ``Compression.fp16``), as hpcdl's scaled fp16."""

    @staticmethod
    def compress(tensor: Any) -> tuple[Any, Any]:
        # Horovod's stand-alone use (compress, then your own allreduce): a plain cast.
        return (tensor.half() if tensor.dtype.is_floating_point else tensor), tensor.dtype

    @staticmethod
    def decompress(tensor: Any, ctx: Any) -> Any:
        return tensor.to(ctx) if ctx is not None and ctx.is_floating_point else tensor


class Compression:
    """The two compressors Horovod ships."""

    none = _NoneSpec
    fp16 = _FP16Spec


_FP16_BY_COMM: dict[int, FP16Compressor] = {}


def hpcdl_compressor(compression: Any, comm: Any) -> Any:
    """What hpcdl's collectives take for ``compression`` on ``comm``.

    ``None`` for no compression, an :class:`FP16Compressor` bound to ``comm`` for
    fp16 (collective, so one per communicator), and otherwise the user's object as
    an :class:`hpcdl.compression.Compressor` (Horovod's two methods are adapted).
    """
    if compression is None or compression is _NoneSpec or isinstance(compression, _NoneSpec):
        return None
    if compression is _FP16Spec or isinstance(compression, _FP16Spec):
        key = id(comm)
        if key not in _FP16_BY_COMM:
            _FP16_BY_COMM[key] = FP16Compressor(comm=comm)
        return _FP16_BY_COMM[key]
    return as_compressor(compression, rank=comm.rank, op="compression")
