"""The jobs the process group runs on the progress thread, one per torch operation.

Each function is blocking and runs on the communicator's progress thread (where
hpcdl's blocking calls do not wait for their own queue). hpcdl's collectives
take the dtypes and ops they accept (algorithms, avg, half-precision upcast,
CUDA staging or CUDA-aware MPI); the rest moves as bytes or reduces through
mpi4py on a host view, with CUDA tensors staged through host memory.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from mpi4py import MPI

from ... import collectives as hc

from ...comm.mpi import MPICommunicator
from .ops import HPCDL_DTYPES, host_array, host_bytes, mpi_type

__all__ = ["on_host", "allreduce", "broadcast", "allgather_flat", "reduce_scatter_flat",
           "alltoall_flat", "gather", "scatter"]


def on_host(t: torch.Tensor, body: Callable[[torch.Tensor], None], *, copy_in: bool = True,
            copy_out: bool = True) -> None:
    """Run ``body`` on ``t`` itself (CPU) or on a host copy of it (CUDA, copied back)."""
    if t.device.type == "cpu":
        body(t)
        return
    host = t.detach().to("cpu") if copy_in else torch.empty(t.shape, dtype=t.dtype)
    body(host)
    if copy_out:
        t.copy_(host)


def allreduce(comm: MPICommunicator, t: torch.Tensor, hop: Any, mop: Any,
              factor: float | None, algorithm: str) -> None:
    """In place. ``hop``: hpcdl's op (its path), else ``mop``: the MPI op (direct path)."""
    if factor is not None:
        t.mul_(factor)  # PREMUL_SUM: scale this rank's contribution, then sum
    if hop is not None:
        hc.allreduce(t, op=hop, algorithm=algorithm, comm=comm)
        return
    if comm.size == 1 or t.numel() == 0:
        return
    on_host(t, lambda h: comm.mpi.Allreduce(MPI.IN_PLACE, [host_array(h), mpi_type(t.dtype)],
                                            mop))


def broadcast(comm: MPICommunicator, t: torch.Tensor, root: int) -> None:
    if t.dtype in HPCDL_DTYPES:
        hc.broadcast(t, root=root, comm=comm)
        return
    if comm.size == 1 or t.numel() == 0:
        return
    on_host(t, lambda h: comm.mpi.Bcast([host_bytes(h), MPI.BYTE], root),
            copy_in=comm.rank == root)


def allgather_flat(comm: MPICommunicator, out: torch.Tensor, inp: torch.Tensor) -> None:
    """``out`` (contiguous, size * inp.numel() elements) gets every rank's ``inp`` in order."""
    if inp.dtype in HPCDL_DTYPES and inp.device == out.device:
        hc.allgather(inp, out=out, comm=comm)
        return
    src = inp.detach().to("cpu")

    def body(h: torch.Tensor) -> None:
        comm.mpi.Allgather([host_bytes(src), MPI.BYTE], [host_bytes(h), MPI.BYTE])
    on_host(out, body, copy_in=False)


def reduce_scatter_flat(comm: MPICommunicator, out: torch.Tensor, inp: torch.Tensor, hop: Any,
                        mop: Any, factor: float | None) -> None:
    """Block ``rank`` of the reduction of ``inp`` (size equal blocks) into ``out``."""
    if factor is not None:
        inp = inp * factor  # a copy: the caller's input stays as it was
    if hop is not None:
        hc.reduce_scatter(inp, out=out, op=hop, comm=comm)
        return
    src = host_array(inp.detach().to("cpu").contiguous())

    def body(h: torch.Tensor) -> None:
        dt = mpi_type(inp.dtype)
        comm.mpi.Reduce_scatter_block([src, dt], [host_array(h), dt], mop)
    on_host(out, body, copy_in=False)


def _row_bytes(t: torch.Tensor) -> int:
    rows = t.shape[0] if t.dim() else 1
    return (t.numel() // rows if rows else 0) * t.element_size()


def split_counts(t: torch.Tensor, splits: Sequence[int], size: int) -> list[int]:
    """Bytes per rank for an all_to_all_single split along dim 0 (equal when empty)."""
    rows = t.shape[0] if t.dim() else 1
    if not splits:
        return [rows // size * _row_bytes(t)] * size
    return [int(s) * _row_bytes(t) for s in splits]


def _displs(counts: list[int]) -> list[int]:
    return [int(x) for x in np.concatenate(([0], np.cumsum(counts)[:-1]))] if counts else []


def alltoall_flat(comm: MPICommunicator, out: torch.Tensor, inp: torch.Tensor,
                  send_counts: list[int], recv_counts: list[int]) -> None:
    """Byte counts per rank; ``inp`` and ``out`` are contiguous and split along dim 0."""
    src = host_bytes(inp.detach().to("cpu"))

    def body(h: torch.Tensor) -> None:
        comm.mpi.Alltoallv([src, (send_counts, _displs(send_counts)), MPI.BYTE],
                           [host_bytes(h), (recv_counts, _displs(recv_counts)), MPI.BYTE])
    on_host(out, body, copy_in=False)


def gather(comm: MPICommunicator, outs: list[torch.Tensor], inp: torch.Tensor, root: int) -> None:
    """Rank ``root`` gets every rank's ``inp`` into ``outs`` (same shape everywhere)."""
    src = host_bytes(inp.detach().to("cpu"))
    n = src.size
    if comm.rank == root:
        flat = np.empty(n * comm.size, np.uint8)
        comm.mpi.Gather([src, MPI.BYTE], [flat, MPI.BYTE], root)
        for r, o in enumerate(outs):
            part = torch.from_numpy(flat[r * n:(r + 1) * n].copy())
            o.copy_(part.view(o.dtype).reshape(o.shape))
    else:
        comm.mpi.Gather([src, MPI.BYTE], None, root)


def scatter(comm: MPICommunicator, out: torch.Tensor, ins: list[torch.Tensor], root: int) -> None:
    """Rank r gets ``ins[r]`` from ``root`` into ``out``."""
    def body(h: torch.Tensor) -> None:
        dst = host_bytes(h)
        if comm.rank == root:
            flat = np.concatenate([host_bytes(i.detach().to("cpu").contiguous()) for i in ins]) \
                if ins else np.empty(0, np.uint8)
            comm.mpi.Scatter([flat, MPI.BYTE], [dst, MPI.BYTE], root)
        else:
            comm.mpi.Scatter(None, [dst, MPI.BYTE], root)
    on_host(out, body, copy_in=False)
