"""``hvd.allreduce`` and friends: Horovod's defaults over ``hpcdl.allreduce``.

Horovod semantics kept: ``Average`` is the default op; ``allreduce`` returns a
new tensor and ``allreduce_`` writes into its argument; ``*_async`` return a
handle for ``poll``/``synchronize``; ``name=`` is accepted (hpcdl orders
collectives by call order, not by name, so it only labels errors);
``prescale_factor``/``postscale_factor`` multiply before/after; integer
``Average`` truncates toward zero like Horovod's integer scaling.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ... import collectives
from ...collectives.handle import drain
from ...errors import InvalidArgumentError
from .agree import agree, describe, wire_dtype
from .compression import Compression, hpcdl_compressor
from .handles import register, synchronize
from .process_sets import ProcessSet, resolve

__all__ = ["Average", "Sum", "Adasum", "Min", "Max", "Product", "allreduce", "allreduce_",
           "allreduce_async", "allreduce_async_", "grouped_allreduce", "grouped_allreduce_",
           "grouped_allreduce_async", "grouped_allreduce_async_", "handle_op", "scale_",
           "start_reduce"]

# Horovod's ReduceOp values (horovod/common/message.h), so code comparing them still works.
Average, Sum, Adasum, Min, Max, Product = 0, 1, 2, 3, 4, 5
_NAMES = {Average: "avg", Sum: "sum", Min: "min", Max: "max", Product: "prod"}


def handle_op(average: bool | None, op: int | None, where: str) -> int:
    """Horovod's rule: ``op`` or the deprecated ``average``, never both; default Average."""
    if average is not None and op is not None:
        raise InvalidArgumentError("the op parameter supersedes average; pass only op",
                                   op=where)
    if op is None:
        return Average if average is None or average else Sum
    if op not in (Average, Sum, Adasum, Min, Max, Product):
        raise InvalidArgumentError(f"unknown op {op!r}; use hvd.Average, Sum, Adasum, Min, "
                                   "Max or Product", op=where)
    return op


def scale_(t: torch.Tensor, factor: float) -> None:
    """``t *= factor`` in place; integers through float64 and truncation, as Horovod scales."""
    if factor == 1.0:
        return
    if t.dtype.is_floating_point:
        t.mul_(factor)
    else:
        t.copy_((t.double() * factor).trunc())


def start_reduce(tensor: torch.Tensor, output: torch.Tensor | None, name: str | None, op: int,
           prescale: float, postscale: float, ps: ProcessSet, where: str) -> tuple[Any, Any]:
    """Check, then start one allreduce; return (hpcdl handle or None, finish(result))."""
    wire = wire_dtype(tensor, where, ps)
    shape, dtype = describe(tensor)
    agree(ps, where if name is None else f"{where}({name})",
          {"shape": list(shape), "dtype": dtype, "op": op}, ("shape", "dtype", "op"))
    integer = not wire.is_floating_point
    in_place = output is tensor and tensor.is_contiguous() and tensor.dtype == wire
    work = tensor if in_place else tensor.detach().to(wire, copy=True).contiguous()
    scale_(work, prescale)
    if op == Adasum:
        from .adasum import adasum_
        drain(ps.comm)  # point-to-point on the data communicator: after its queued work
        adasum_(work, ps.comm)
        inner = None
    else:
        hop = "sum" if (op == Average and integer) else _NAMES[op]
        inner = collectives.allreduce(work, op=hop, comm=ps.comm, async_op=True)

    def finish(_: Any) -> torch.Tensor:
        if op == Average and integer:
            work.copy_(torch.div(work, ps.comm.size, rounding_mode="trunc"))
        scale_(work, postscale)
        if output is None:
            return work if work.dtype == tensor.dtype else work.to(tensor.dtype)
        if work is not output:
            with torch.no_grad():
                output.copy_(work.view(output.shape))
        return output
    return inner, finish


def allreduce_async(tensor: torch.Tensor, average: bool | None = None, name: str | None = None,
                    op: int | None = None, prescale_factor: float = 1.0,
                    postscale_factor: float = 1.0,
                    process_set: ProcessSet | None = None) -> int:
    op = handle_op(average, op, "allreduce_async")
    ps = resolve(process_set, "allreduce_async")
    return register(*start_reduce(tensor, None, name, op, prescale_factor, postscale_factor, ps,
                            "allreduce_async"))


def allreduce_async_(tensor: torch.Tensor, average: bool | None = None, name: str | None = None,
                     op: int | None = None, prescale_factor: float = 1.0,
                     postscale_factor: float = 1.0,
                     process_set: ProcessSet | None = None) -> int:
    op = handle_op(average, op, "allreduce_async_")
    ps = resolve(process_set, "allreduce_async_")
    return register(*start_reduce(tensor, tensor, name, op, prescale_factor, postscale_factor, ps,
                            "allreduce_async_"))


def allreduce(tensor: torch.Tensor, average: bool | None = None, name: str | None = None,
              compression: Any = Compression.none, op: int | None = None,
              prescale_factor: float = 1.0, postscale_factor: float = 1.0,
              process_set: ProcessSet | None = None) -> torch.Tensor:
    """A new tensor holding the reduction (default: the average) over the ranks."""
    op = handle_op(average, op, "allreduce")
    ps = resolve(process_set, "allreduce")
    comp = hpcdl_compressor(compression, ps.comm)
    if comp is None:
        return synchronize(register(*start_reduce(tensor, None, name, op, prescale_factor,
                                            postscale_factor, ps, "allreduce")))
    if op not in (Average, Sum) or not tensor.dtype.is_floating_point:
        # Horovod compresses whatever it is given; scaled fp16 is defined for float sums.
        label = getattr(compression, "__name__", repr(compression))
        raise InvalidArgumentError(f"compression={label} needs a floating tensor and op "
                                   "Average or Sum",
                                   rank=ps.comm.rank, op="allreduce")
    shape, dtype = describe(tensor)
    agree(ps, "allreduce", {"shape": list(shape), "dtype": dtype, "op": op},
          ("shape", "dtype", "op"))
    work = tensor.detach().clone().contiguous()
    scale_(work, prescale_factor)
    payload, ctx = comp.compress(work)
    collectives.allreduce(payload, op="sum", comm=ps.comm)
    result = comp.decompress(payload, ctx)
    if op == Average:
        result = result / ps.comm.size
    scale_(result, postscale_factor)
    return result.to(tensor.dtype).view(tensor.shape)


def allreduce_(tensor: torch.Tensor, average: bool | None = None, name: str | None = None,
               op: int | None = None, prescale_factor: float = 1.0,
               postscale_factor: float = 1.0,
               process_set: ProcessSet | None = None) -> torch.Tensor:
    """Reduce into ``tensor`` itself and return it."""
    return synchronize(allreduce_async_(tensor, average, name, op, prescale_factor,
                                        postscale_factor, process_set))


def _grouped(tensors: Sequence[torch.Tensor], outputs: Sequence[Any], average: bool | None,
             name: str | None, op: int | None, prescale: float, postscale: float,
             process_set: ProcessSet | None, where: str) -> int:
    op = handle_op(average, op, where)
    ps = resolve(process_set, where)
    started = [start_reduce(t, o, None if name is None else f"{name}.{i}", op, prescale, postscale,
                      ps, where) for i, (t, o) in enumerate(zip(tensors, outputs))]

    def finish(_: Any) -> list[torch.Tensor]:
        return [f(h.wait() if h is not None else None) for h, f in started]
    return register([h for h, _ in started], finish)


def grouped_allreduce_async(tensors: Sequence[torch.Tensor], average: bool | None = None,
                            name: str | None = None, op: int | None = None,
                            prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                            process_set: ProcessSet | None = None) -> int:
    return _grouped(tensors, [None] * len(tensors), average, name, op, prescale_factor,
                    postscale_factor, process_set, "grouped_allreduce_async")


def grouped_allreduce_async_(tensors: Sequence[torch.Tensor], average: bool | None = None,
                             name: str | None = None, op: int | None = None,
                             prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                             process_set: ProcessSet | None = None) -> int:
    return _grouped(tensors, list(tensors), average, name, op, prescale_factor,
                    postscale_factor, process_set, "grouped_allreduce_async_")


def grouped_allreduce(tensors: Sequence[torch.Tensor], average: bool | None = None,
                      name: str | None = None, compression: Any = Compression.none,
                      op: int | None = None, prescale_factor: float = 1.0,
                      postscale_factor: float = 1.0,
                      process_set: ProcessSet | None = None) -> list[torch.Tensor]:
    """New tensors: each of ``tensors`` reduced (one call, Horovod fuses; so does MPI order)."""
    if hpcdl_compressor(compression, resolve(process_set, "grouped_allreduce").comm) is not None:
        return [allreduce(t, average, None if name is None else f"{name}.{i}", compression,
                          op, prescale_factor, postscale_factor, process_set)
                for i, t in enumerate(tensors)]
    return synchronize(grouped_allreduce_async(tensors, average, name, op, prescale_factor,
                                               postscale_factor, process_set))


def grouped_allreduce_(tensors: Sequence[torch.Tensor], average: bool | None = None,
                       name: str | None = None, op: int | None = None,
                       prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                       process_set: ProcessSet | None = None) -> list[torch.Tensor]:
    return synchronize(grouped_allreduce_async_(tensors, average, name, op, prescale_factor,
                                                postscale_factor, process_set))
