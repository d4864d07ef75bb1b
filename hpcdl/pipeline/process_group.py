"""torch.distributed over hpcdl's ranks: the one place that picks the backend.

torch's pipelining schedules send activations and gradients with
``torch.distributed`` point-to-point calls, so a process group must exist.
Rank and world size come from MPI (``hpcdl.init()``); nothing has to be set in
the environment.

``BACKEND`` names the torch backend. ``"hpcdl"`` (``import hpcdl.torch``
registers it) carries the traffic over MPI. ``"gloo"`` is the fallback: its
rendezvous store is a ``TCPStore`` opened by rank 0 on a free port that MPI
broadcasts to the others, so it needs no ``MASTER_ADDR``/``MASTER_PORT`` either.
"""

from __future__ import annotations

import datetime
import os
import socket

import torch.distributed as dist

from hpcdl import runtime
from hpcdl.errors import InvalidArgumentError
from hpcdl.torch.backend import register as register_backend
from hpcdl.torch.broadcast import broadcast_object

__all__ = ["BACKEND", "init_process_group", "DEFAULT_TIMEOUT_S"]

#: The torch backend the pipeline runs over (env ``HPCDL_PIPELINE_BACKEND`` overrides).
BACKEND = os.environ.get("HPCDL_PIPELINE_BACKEND", "hpcdl")

#: Every send/recv of a stage waits at most this long (a dead peer must not hang the job),
#: unless ``HPCDL_PIPELINE_TIMEOUT`` (read at each init_process_group) says otherwise.
DEFAULT_TIMEOUT_S = 300.0


def init_process_group(backend: str | None = None, timeout_s: float | None = None) -> str:
    """Start torch.distributed on the ranks of ``hpcdl.init()`` (once; later calls check).

    ``timeout_s`` (default ``HPCDL_PIPELINE_TIMEOUT``, else 300) bounds every wait of
    the group, with either backend. Returns the backend in use. Collective over the
    world communicator.
    """
    ctx = runtime.init()
    if timeout_s is None:
        raw = os.environ.get("HPCDL_PIPELINE_TIMEOUT", "").strip()
        try:
            timeout_s = float(raw) if raw else DEFAULT_TIMEOUT_S
        except ValueError:
            raise InvalidArgumentError(f"HPCDL_PIPELINE_TIMEOUT={raw!r} is not a number of "
                                       "seconds", rank=ctx.rank, op="pipeline.init_process_group"
                                       ) from None
    if not timeout_s > 0:
        raise InvalidArgumentError(f"timeout_s={timeout_s!r}: use seconds > 0", rank=ctx.rank,
                                   op="pipeline.init_process_group")
    backend = backend or BACKEND
    if dist.is_initialized():
        if dist.get_world_size() != ctx.size or dist.get_rank() != ctx.rank:
            raise InvalidArgumentError(
                f"torch.distributed is already initialised as rank {dist.get_rank()} of "
                f"{dist.get_world_size()}, but MPI says rank {ctx.rank} of {ctx.size}",
                rank=ctx.rank, size=ctx.size, op="pipeline.init_process_group")
        return dist.get_backend()
    timeout = datetime.timedelta(seconds=timeout_s)
    if backend == "hpcdl":
        register_backend()  # idempotent; importing hpcdl.torch has done it already
        dist.init_process_group("hpcdl", timeout=timeout)
        return backend
    store = None
    if ctx.rank == 0:
        # Port 0: the OS picks a free port, so two jobs on one node never collide.
        store = dist.TCPStore("0.0.0.0", 0, ctx.size, is_master=True, timeout=timeout,
                              wait_for_workers=False)
        where = (socket.gethostname(), store.port)
    else:
        where = None
    host, port = broadcast_object(where, root_rank=0)
    if ctx.rank != 0:
        if host == socket.gethostname():
            host = "127.0.0.1"
        store = dist.TCPStore(host, port, ctx.size, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=ctx.rank, world_size=ctx.size,
                            timeout=timeout)
    return backend
