"""The compressor protocol and the identity compressor."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["Compressor", "NoneCompressor"]


@runtime_checkable
class Compressor(Protocol):
    """``compress(x) -> (payload, ctx)``; ``decompress(payload, ctx) -> x``.

    The payload is what gets allreduced (op="sum"); ``ctx`` is whatever
    ``decompress`` needs and never travels.
    """

    def compress(self, tensor: Any) -> tuple[Any, Any]: ...
    def decompress(self, payload: Any, ctx: Any) -> Any: ...


class NoneCompressor:
    """No compression: the payload is the tensor itself."""

    __slots__ = ()

    def compress(self, tensor: Any, name: str | None = None) -> tuple[Any, None]:
        return tensor, None

    def decompress(self, payload: Any, ctx: None) -> Any:
        return payload

    def __repr__(self) -> str:
        return "NoneCompressor()"
