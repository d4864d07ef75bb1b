"""The compressor protocol, the identity compressor, and the adapter for Horovod's
two-method compressors."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

from ..errors import InvalidArgumentError

__all__ = ["Compressor", "NoneCompressor", "PlainCompressor", "as_compressor"]


@runtime_checkable
class Compressor(Protocol):
    """What hpcdl's optimizers and collectives call; every member is required.

    ``compress(x, *, name=None) -> (payload, ctx)``: the payload is what gets
    allreduced (op="sum"); ``ctx`` is whatever ``decompress`` needs and never
    travels; ``name`` names ``x`` across steps (error feedback keys residuals by it).
    ``decompress(payload, ctx) -> x``: the sum, in ``x``'s dtype and shape.
    ``bind(comm)``: the communicator the payload will be summed over (a collective
    compressor agrees on its scales there; raise if it cannot).
    ``collective``: True when ``compress`` itself communicates over the bound
    communicator, so every rank must call it for the same tensors in the same order.
    """

    collective: bool

    def compress(self, tensor: Any, *, name: str | None = None) -> tuple[Any, Any]: ...
    def decompress(self, payload: Any, ctx: Any) -> Any: ...
    def bind(self, comm: Any) -> None: ...


class NoneCompressor:
    """No compression: the payload is the tensor itself."""

    __slots__ = ()
    collective: ClassVar[bool] = False

    def compress(self, tensor: Any, *, name: str | None = None) -> tuple[Any, None]:
        return tensor, None

    def decompress(self, payload: Any, ctx: None) -> Any:
        return payload

    def bind(self, comm: Any) -> None:
        pass

    def __repr__(self) -> str:
        return "NoneCompressor()"


class PlainCompressor:
    """Horovod's contract (only ``compress(t)`` and ``decompress(p, ctx)``, e.g. a
    subclass of ``hvd.Compressor``) seen as a :class:`Compressor`: it gets no
    name, binds to nothing and does not communicate."""

    __slots__ = ("inner",)
    collective: ClassVar[bool] = False

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def compress(self, tensor: Any, *, name: str | None = None) -> tuple[Any, Any]:
        return self.inner.compress(tensor)

    def decompress(self, payload: Any, ctx: Any) -> Any:
        return self.inner.decompress(payload, ctx)

    def bind(self, comm: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"PlainCompressor({self.inner!r})"


def as_compressor(obj: Any, *, rank: int | None = None, op: str = "compression") -> Any:
    """``obj`` as a :class:`Compressor` (``None`` stays ``None``): itself when it
    implements the protocol, wrapped in :class:`PlainCompressor` when it has only
    Horovod's two methods; anything else is an error naming the rank."""
    if obj is None or isinstance(obj, Compressor):
        return obj
    if callable(getattr(obj, "compress", None)) and callable(getattr(obj, "decompress", None)):
        return PlainCompressor(obj)
    raise InvalidArgumentError(f"compression={obj!r} implements neither hpcdl.compression."
                               "Compressor (compress(x, *, name=None), decompress, bind, "
                               "collective) nor Horovod's compress/decompress", rank=rank, op=op)
