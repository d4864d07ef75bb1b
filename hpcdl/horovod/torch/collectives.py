"""``hvd.allgather``, ``broadcast``, ``alltoall``, ``reducescatter``, ``join``, ``barrier``.

Horovod's shapes are kept: ``allgather`` concatenates along dim 0 and lets the
first dimension differ per rank; ``alltoall`` splits dim 0 by ``splits`` and
returns ``(output, received_splits)`` when splits are given; ``reducescatter``
leaves rank ``r`` rows ``r*n/size ...`` of the reduction (the first ``n % size``
ranks get one extra row). Every call first agrees on shapes across ranks
(agree.py) and raises on all ranks, naming the odd ones, when they differ.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ... import collectives
from ...collectives.blocks import block_bounds
from ...collectives.handle import drain
from ...errors import InvalidArgumentError
from ...ops import check_root
from .agree import agree, describe, wire_dtype
from .compression import Compression
from .handles import register, synchronize
from .process_sets import ProcessSet, resolve
from .reduce import Average, Sum, handle_op, start_reduce

__all__ = ["allgather", "allgather_async", "broadcast", "broadcast_", "broadcast_async",
           "broadcast_async_", "alltoall", "alltoall_async", "reducescatter",
           "reducescatter_async", "join", "barrier"]


def _label(where: str, name: str | None) -> str:
    return where if name is None else f"{where}({name})"


def allgather_async(tensor: torch.Tensor, name: str | None = None,
                    process_set: ProcessSet | None = None) -> int:
    where = _label("allgather", name)
    ps = resolve(process_set, where)
    wire = wire_dtype(tensor, where, ps)
    if tensor.dim() == 0:
        raise InvalidArgumentError("allgather needs a tensor of at least one dimension",
                                   rank=ps.comm.rank, op=where)
    shape, dtype = describe(tensor)
    everyone = agree(ps, where, {"rest": list(shape[1:]), "dtype": dtype, "rows": shape[0]},
                     ("rest", "dtype"))
    rows = [d["rows"] for d in everyone]
    top = max(rows)
    work = torch.zeros((top, *shape[1:]), dtype=wire, device=tensor.device)
    work[:shape[0]] = tensor.detach()
    inner = collectives.allgather(work, comm=ps.comm, async_op=True)

    def finish(gathered: torch.Tensor) -> torch.Tensor:
        parts = [gathered[r, :n] for r, n in enumerate(rows)]
        return torch.cat(parts).to(tensor.dtype)
    return register(inner, finish)


def allgather(tensor: torch.Tensor, name: str | None = None,
              process_set: ProcessSet | None = None) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 (first dims may differ)."""
    return synchronize(allgather_async(tensor, name, process_set))


def _broadcast_start(tensor: torch.Tensor, output: torch.Tensor | None, root_rank: int,
                     name: str | None, process_set: ProcessSet | None, where: str) -> int:
    where = _label(where, name)
    ps = resolve(process_set, where)
    wire = wire_dtype(tensor, where, ps)
    root_rank = check_root(root_rank, ps.comm.size, rank=ps.comm.rank, op_name=where,
                           arg="root_rank", group="the process set")
    shape, dtype = describe(tensor)
    agree(ps, where, {"shape": list(shape), "dtype": dtype, "root_rank": root_rank},
          ("root_rank", "shape", "dtype"))
    in_place = output is tensor and tensor.is_contiguous() and tensor.dtype == wire
    work = tensor if in_place else tensor.detach().to(wire, copy=True).contiguous()
    inner = collectives.broadcast(work, root=root_rank, comm=ps.comm, async_op=True)

    def finish(_: Any) -> torch.Tensor:
        if output is None:
            return work.to(tensor.dtype)
        if work is not output:
            with torch.no_grad():
                output.copy_(work)
        return output
    return register(inner, finish)


def broadcast_async(tensor: torch.Tensor, root_rank: int, name: str | None = None,
                    process_set: ProcessSet | None = None) -> int:
    return _broadcast_start(tensor, None, root_rank, name, process_set, "broadcast_async")


def broadcast_async_(tensor: torch.Tensor, root_rank: int, name: str | None = None,
                     process_set: ProcessSet | None = None) -> int:
    return _broadcast_start(tensor, tensor, root_rank, name, process_set, "broadcast_async_")


def broadcast(tensor: torch.Tensor, root_rank: int, name: str | None = None,
              process_set: ProcessSet | None = None) -> torch.Tensor:
    """A new tensor holding ``root_rank``'s ``tensor``."""
    return synchronize(_broadcast_start(tensor, None, root_rank, name, process_set,
                                        "broadcast"))


def broadcast_(tensor: torch.Tensor, root_rank: int, name: str | None = None,
               process_set: ProcessSet | None = None) -> torch.Tensor:
    """Overwrite ``tensor`` with ``root_rank``'s and return it."""
    return synchronize(_broadcast_start(tensor, tensor, root_rank, name, process_set,
                                        "broadcast_"))


def _splits_of(tensor: torch.Tensor, splits: Any, size: int, rank: int, where: str) -> list[int]:
    rows = tensor.shape[0] if tensor.dim() else 0
    if splits is None:
        if tensor.dim() == 0 or rows % size:
            raise InvalidArgumentError(f"without splits, dim 0 ({rows}) must be divisible by "
                                       f"the number of ranks ({size})", rank=rank, op=where)
        return [rows // size] * size
    if isinstance(splits, torch.Tensor):
        if splits.dtype not in (torch.int32, torch.int64):
            raise InvalidArgumentError(f"splits must be an int32 or int64 tensor, got "
                                       f"{splits.dtype}", rank=rank, op=where)
        splits = splits.tolist()
    out = [int(s) for s in splits]
    if len(out) != size or any(s < 0 for s in out) or sum(out) != rows:
        raise InvalidArgumentError(f"splits {out} must be {size} non-negative counts summing "
                                   f"to dim 0 ({rows})", rank=rank, op=where)
    return out


def alltoall_async(tensor: torch.Tensor, splits: Any = None, name: str | None = None,
                   process_set: ProcessSet | None = None) -> int:
    """Runs at the call (point-to-point on the set's own communicator); the handle is done."""
    where = _label("alltoall", name)
    ps = resolve(process_set, where)
    c = ps.meta
    mine = _splits_of(tensor, splits, c.size, c.rank, where)
    shape, dtype = describe(tensor)
    everyone = agree(ps, where, {"rest": list(shape[1:]), "dtype": dtype, "splits": mine},
                     ("rest", "dtype"))
    recv_rows = [d["splits"][c.rank] for d in everyone]
    src = tensor.detach().contiguous().cpu()
    out = torch.empty((sum(recv_rows), *shape[1:]), dtype=tensor.dtype)
    row_bytes = src[:1].numel() * src.element_size() if src.dim() else 0
    sb = src.reshape(-1).view(torch.uint8).numpy() if src.numel() else np.empty(0, np.uint8)
    rb = out.reshape(-1).view(torch.uint8).numpy() if out.numel() else np.empty(0, np.uint8)
    drain(ps.comm)  # keep MPI's per-rank order with this set's queued collectives
    requests, s_off, r_off = [], 0, 0
    for peer in range(c.size):
        n_in, n_out = recv_rows[peer] * row_bytes, mine[peer] * row_bytes
        if n_in:
            requests.append(c.irecv(rb[r_off:r_off + n_in], peer, tag=7))
        if n_out:
            requests.append(c.isend(sb[s_off:s_off + n_out], peer, tag=7))
        r_off, s_off = r_off + n_in, s_off + n_out
    c.waitall(requests)
    result = out.to(tensor.device)
    received = torch.tensor(recv_rows, dtype=torch.int32)
    return register(None, lambda _: (result, received))


def alltoall(tensor: torch.Tensor, splits: Any = None, name: str | None = None,
             process_set: ProcessSet | None = None) -> Any:
    """Rows ``splits[r]`` of dim 0 go to rank ``r``; returns (output, received_splits)
    when ``splits`` is given, else the output alone (Horovod's return convention)."""
    output, received = synchronize(alltoall_async(tensor, splits, name, process_set))
    return output if splits is None else (output, received)


def reducescatter_async(tensor: torch.Tensor, name: str | None = None, op: int = Average,
                        process_set: ProcessSet | None = None, prescale_factor: float = 1.0,
                        postscale_factor: float = 1.0) -> int:
    where = _label("reducescatter", name)
    op = handle_op(None, op, where)
    ps = resolve(process_set, where)
    if op not in (Average, Sum):
        raise InvalidArgumentError("reducescatter supports op Average or Sum (as Horovod)",
                                   rank=ps.comm.rank, op=where)
    if tensor.dim() == 0:
        raise InvalidArgumentError("reducescatter needs a tensor of at least one dimension",
                                   rank=ps.comm.rank, op=where)
    size, rank, rows = ps.comm.size, ps.comm.rank, tensor.shape[0]
    bounds = block_bounds(rows, size)
    start, mine = bounds[rank], bounds[rank + 1] - bounds[rank]
    # The whole reduction, then this rank's rows: Horovod's row split is not
    # hpcdl.reduce_scatter's element split unless dim 0 divides evenly.
    inner, finish_all = start_reduce(tensor, None, name, op, prescale_factor, postscale_factor, ps,
                               "reducescatter")
    return register(inner, lambda r: finish_all(r)[start:start + mine].clone())


def reducescatter(tensor: torch.Tensor, name: str | None = None,
                  compression: Any = Compression.none, op: int = Average,
                  process_set: ProcessSet | None = None, prescale_factor: float = 1.0,
                  postscale_factor: float = 1.0) -> torch.Tensor:
    """This rank's rows of the reduction (default Average) over the ranks."""
    payload, ctx = compression.compress(tensor)
    out = synchronize(reducescatter_async(payload, name, op, process_set, prescale_factor,
                                          postscale_factor))
    return compression.decompress(out, ctx)


def barrier(process_set: ProcessSet | None = None) -> None:
    """Wait until every rank of the set arrives."""
    ps = resolve(process_set, "barrier")
    collectives.barrier(comm=ps.comm)


def join(device: int = -1) -> int:
    """Every rank calls it when done; returns the rank that joined last.

    Horovod also lets the other ranks keep allreducing (joined ranks add zeros);
    hpcdl does not: a rank that joins while others still issue collectives
    leaves them waiting, so give every rank the same number of steps
    (``hpcdl.torch.DistributedSampler`` pads the shards to equal length).
    """
    import time

    ps = resolve(None, "join")
    drain(ps.comm)
    # wall clock, comparable across nodes (monotonic clocks are per machine)
    arrivals = ps.meta.allgather_object(time.time_ns())
    return int(np.argmax(arrivals))
