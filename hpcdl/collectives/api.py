"""The public collectives: one spelling each.

    allreduce(tensor, out=None, op="sum", algorithm="auto", comm=None, async_op=False)
    broadcast(tensor, root=0, comm=None, async_op=False)
    allgather(tensor, out=None, comm=None, async_op=False)
    reduce_scatter(tensor, out=None, op="sum", comm=None, async_op=False)
    barrier(comm=None, async_op=False)

``out=None`` means in place for ``allreduce`` and a newly allocated result for
``allgather``/``reduce_scatter``. Each returns its result buffer, or with
``async_op=True`` a :class:`~hpcdl.collectives.handle.Handle` whose ``wait()``
returns it. Inputs are checked on the calling rank before any communication;
``HPCDL_DEBUG=1`` adds the check across ranks.

Device buffers go to MPI directly when it is CUDA-aware (native algorithm,
MPI-reducible dtype); otherwise through host staging buffers.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..buffers import Buffer, as_buffer, check_same_device, empty_like
from ..comm.base import Communicator
from ..errors import InvalidArgumentError
from ..ops import ReduceOp, check_dtype, check_root, dtype_name, is_half, parse_op
from .. import trace
from ..trace.hooks import traced
from ..context import default_comm
from .blocks import block_counts
from .debug import check_same_call, debug_enabled
from .handle import drain, executor_for
from .fastpath import MISS, try_allreduce
from .native import native_reduce_scatter
from .registry import resolve_allreduce, run_allreduce
from .staging import staged

__all__ = ["allreduce", "broadcast", "allgather", "reduce_scatter", "barrier", "block_counts"]



def _launch(comm: Communicator, op_name: str, async_op: bool, run: Callable[[], Any],
            nbytes: int = 0, algorithm: str = "") -> Any:
    if trace.ON:
        run = traced(comm, op_name, run, nbytes, algorithm, queued=async_op)
    if async_op:
        return executor_for(comm).submit(op_name, run)
    drain(comm)
    return run()


def _output(comm: Communicator, op_name: str, inp: Buffer, out: Any, count: int,
            shape: tuple[int, ...]) -> tuple[Any, Buffer]:
    """Check or allocate the result buffer of ``count`` elements."""
    if out is None:
        out = empty_like(inp, shape, rank=comm.rank, op=op_name)
    ob = as_buffer(out, arg="out", writable=True, rank=comm.rank, op=op_name)
    check_same_device(inp, ob, rank=comm.rank, op=op_name)
    if ob.size != count:
        raise InvalidArgumentError(f"argument 'out' holds {ob.size} elements "
                                   f"({dtype_name(ob.dtype)}{list(ob.shape)}), expected {count}",
                                   rank=comm.rank, op=op_name)
    return out, ob


def allreduce(tensor: Any, out: Any = None, op: "str | ReduceOp" = "sum",
              algorithm: str = "auto", comm: Communicator | None = None,
              async_op: bool = False) -> Any:
    """Reduce ``tensor`` across the ranks of ``comm``; every rank gets the result.

    The result goes into ``out`` when given, else into ``tensor`` itself.
    """
    if out is None and not async_op and type(tensor) is np.ndarray:
        # The hottest case: a blocking in-place NumPy allreduce, served from a plan
        # cached on the communicator (fastpath.py); MISS sends the rest below.
        done = try_allreduce(tensor, op, algorithm, comm)
        if done is not MISS:
            return done
    return _allreduce(tensor, out, op, algorithm, comm, async_op)


def _allreduce(tensor: Any, out: Any, op: "str | ReduceOp", algorithm: str,
               comm: Communicator | None, async_op: bool) -> Any:
    """The general path: every buffer kind, out=, async, debug checks, staging.

    A separate function because its closures turn its locals into cells, which
    CPython creates on every call: ~0.3 us that the fast path above must not pay.
    """
    c = default_comm(comm)
    rop = parse_op(op, rank=c.rank, op_name="allreduce")
    inp = as_buffer(tensor, arg="tensor", writable=out is None, rank=c.rank, op="allreduce")
    check_dtype(inp.dtype, rop, rank=c.rank, op_name="allreduce")
    if out is None:
        result, ob = tensor, inp
    else:
        result, ob = _output(c, "allreduce", inp, out, inp.size, inp.shape)
    # On CUDA-aware MPI a device buffer's native call skips staging, which the
    # trials (timing the host-side work) cannot see: there auto keeps the table.
    online = not (inp.is_device and getattr(c, "cuda_aware", False))
    name, fn = resolve_allreduce(algorithm, c, inp.nbytes, inp.dtype, rank=c.rank, online=online)

    def run() -> Any:
        if debug_enabled():
            check_same_call(c, "allreduce", shape=inp.shape, dtype=dtype_name(inp.dtype),
                            op=rop.value, algorithm=name)
        if inp.size and c.size > 1:
            def work(host: np.ndarray) -> None:
                run_allreduce(c, fn, host, rop)
            direct = None
            if name == "native" and rop is not ReduceOp.AVG and not is_half(inp.dtype):
                direct = lambda: c.allreduce(ob, rop)  # noqa: E731
            staged(c, inp, ob, work, direct=direct, chunked=True)
        elif inp.size and ob is not inp:
            staged(c, inp, ob, lambda host: None)
        return result

    return _launch(c, "allreduce", async_op, run, inp.nbytes, name)


def broadcast(tensor: Any, root: int = 0, comm: Communicator | None = None,
              async_op: bool = False) -> Any:
    """Copy ``tensor`` from rank ``root`` into ``tensor`` on every rank (in place)."""
    c = default_comm(comm)
    root = check_root(root, c.size, rank=c.rank, op_name="broadcast")
    buf = as_buffer(tensor, arg="tensor", writable=True, rank=c.rank, op="broadcast")

    def run() -> Any:
        if debug_enabled():
            check_same_call(c, "broadcast", shape=buf.shape, dtype=dtype_name(buf.dtype),
                            root=int(root))
        if buf.size and c.size > 1:
            staged(c, buf, buf, lambda host: c.bcast(host, int(root)),
                   direct=lambda: c.bcast(buf, int(root)), copy_in=c.rank == root)
        return tensor

    return _launch(c, "broadcast", async_op, run, buf.nbytes)


def allgather(tensor: Any, out: Any = None, comm: Communicator | None = None,
              async_op: bool = False) -> Any:
    """Gather every rank's ``tensor`` (same shape everywhere) into ``out[rank]``.

    ``out`` holds ``size * tensor.size`` elements; allocated with shape
    ``(size, *tensor.shape)`` when not given.
    """
    c = default_comm(comm)
    inp = as_buffer(tensor, arg="tensor", rank=c.rank, op="allgather")
    result, ob = _output(c, "allgather", inp, out, c.size * inp.size, (c.size, *inp.shape))

    def run() -> Any:
        if debug_enabled():
            check_same_call(c, "allgather", shape=inp.shape, dtype=dtype_name(inp.dtype))
        if inp.size:
            staged_gather(c, inp, ob)
        return result

    return _launch(c, "allgather", async_op, run, inp.nbytes)


def staged_gather(c: Communicator, inp: Buffer, ob: Buffer) -> None:
    # The whole result is staged; the input is read into this rank's slot first.
    def work(host: np.ndarray) -> None:
        mine = host[c.rank * inp.size:(c.rank + 1) * inp.size].copy()
        c.allgather(mine, host)

    from .staging import read_input_into

    staged(c, ob, ob, work, direct=lambda: c.allgather(inp, ob), copy_in=False,
           prepare=lambda host: read_input_into(c, inp, host, c.rank * inp.size))


def reduce_scatter(tensor: Any, out: Any = None, op: "str | ReduceOp" = "sum",
                   comm: Communicator | None = None, async_op: bool = False) -> Any:
    """Reduce ``tensor`` across ranks and leave block ``rank`` of the result here.

    The flat result is cut into ``size`` blocks by :func:`block_counts`; ``out``
    holds this rank's block (allocated 1-D when not given).
    """
    c = default_comm(comm)
    rop = parse_op(op, rank=c.rank, op_name="reduce_scatter")
    inp = as_buffer(tensor, arg="tensor", rank=c.rank, op="reduce_scatter")
    check_dtype(inp.dtype, rop, rank=c.rank, op_name="reduce_scatter")
    counts = block_counts(inp.size, c.size)
    result, ob = _output(c, "reduce_scatter", inp, out, counts[c.rank], (counts[c.rank],))

    def run() -> Any:
        if debug_enabled():
            check_same_call(c, "reduce_scatter", shape=inp.shape, dtype=dtype_name(inp.dtype),
                            op=rop.value)
        if inp.size:
            from .staging import host_copy

            def work(host: np.ndarray) -> None:
                send = host_copy(c, inp)
                native_reduce_scatter(c, send, host, counts, rop)  # avg comes back finished
            staged(c, ob, ob, work, copy_in=False)
        return result

    return _launch(c, "reduce_scatter", async_op, run, inp.nbytes)


def barrier(comm: Communicator | None = None, async_op: bool = False) -> Any:
    """Wait until every rank of ``comm`` has arrived."""
    c = default_comm(comm)

    def run() -> None:
        if debug_enabled():
            check_same_call(c, "barrier")
        c.barrier()

    return _launch(c, "barrier", async_op, run)
