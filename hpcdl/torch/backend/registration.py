"""Registering the backend name "hpcdl" with torch.distributed.

``init_process_group("hpcdl")`` needs no environment variables: rank and size
come from MPI. torch's default ``env://`` rendezvous would insist on
MASTER_ADDR/RANK/WORLD_SIZE, so when MASTER_ADDR is unset we answer that
rendezvous ourselves: rank and size from MPI, and a real TCPStore whose
address rank 0 sends to the others over MPI (hpcdl's group never uses the
store, but torch code that does, and gloo groups created beside it, keep
working). With MASTER_ADDR set (torchrun, or a script that sets it), torch's
own handler runs unchanged.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from datetime import timedelta
from typing import Any, Iterator
from urllib.parse import parse_qs, urlparse

import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout
import torch.distributed.rendezvous  # noqa: F401 - the module, for its handler table
_rdzv = sys.modules["torch.distributed.rendezvous"]

from ... import collectives, runtime

from ...comm.mpi import MPICommunicator
from ...errors import CommError, InvalidArgumentError
from .process_group import ProcessGroupHpcdl

__all__ = ["Options", "register", "init_process_group", "BACKEND"]

BACKEND = "hpcdl"


@dataclasses.dataclass
class Options:
    """``pg_options`` for the hpcdl backend: ``algorithm`` pins allreduce's algorithm
    (one of :func:`hpcdl.algorithm_names`; ``auto`` lets hpcdl choose by size)."""

    algorithm: str | None = None


def _algorithm(pg_options: Any, rank: int) -> str:
    name = getattr(pg_options, "algorithm", None) or os.environ.get("HPCDL_ALGORITHM") or "auto"
    if name not in collectives.algorithm_names():
        raise InvalidArgumentError(f"algorithm {name!r} (from pg_options or HPCDL_ALGORITHM) "
                                   f"is not one of {collectives.algorithm_names()}", rank=rank,
                                   op="init_process_group")
    return name


def _create(opts: Any, pg_options: Any) -> ProcessGroupHpcdl:
    """torch's factory hook (extended API): one ProcessGroupHpcdl per torch group."""
    world = runtime.init().comm
    ranks = [int(r) for r in opts.global_ranks_in_group]
    whole = not ranks or ranks == list(range(world.size))
    if whole and (opts.group_rank, opts.group_size) != (world.rank, world.size):
        raise InvalidArgumentError(
            f"torch was given rank={opts.group_rank}, world_size={opts.group_size} but MPI says "
            f"rank={world.rank}, world_size={world.size}; drop rank=/world_size= (the hpcdl "
            "backend takes them from MPI) or launch with a matching -n", rank=world.rank,
            size=world.size, op="init_process_group")
    algorithm = _algorithm(pg_options, world.rank)
    if not ranks:
        # A Dup, never hpcdl's world itself: the default group gets its own MPI context
        # and progress queue, so hpcdl.allreduce(..., async_op=True) on the world and
        # torch collectives issued in another order cannot meet each other.
        comm = MPICommunicator(world.mpi.Dup())
        comm.cuda_aware = world.cuda_aware
    else:
        # Only the members call this (torch skips the factory elsewhere), so the
        # communicator comes from MPI_Comm_create_group, collective over members only.
        group = world.mpi.Get_group().Incl(ranks)
        comm = MPICommunicator(world.mpi.Create_group(group, tag=7))
        group.Free()
        comm.cuda_aware = world.cuda_aware
    if comm.rank != opts.group_rank:
        raise InvalidArgumentError(f"torch numbers this rank {opts.group_rank} in group "
                                   f"{ranks} but MPI numbers it {comm.rank}", rank=world.rank,
                                   op="new_group")
    p2p = MPICommunicator(comm.mpi.Dup())  # freed with the group (shutdown)
    # torch hands the group's timeout (init_process_group/new_group timeout=) to the
    # factory; every Work's wait honours it (it was dropped: waits took 1800 s).
    # torch passes its 30-minute default when none was given: HPCDL_TORCH_TIMEOUT applies.
    timeout = getattr(opts, "timeout", None)
    seconds = timeout.total_seconds() if hasattr(timeout, "total_seconds") \
        and timeout != default_pg_timeout else None
    return ProcessGroupHpcdl(comm, p2p, algorithm, seconds)


def _store(world: MPICommunicator, timeout: timedelta) -> dist.TCPStore:
    """A TCPStore served by rank 0 on a free port; its address travels over MPI."""
    err = None
    addr = None
    if world.rank == 0:
        try:
            store = dist.TCPStore("0.0.0.0", 0, world.size, is_master=True, timeout=timeout,
                                  wait_for_workers=False)  # they connect after the bcast
            addr = (socket.gethostname(), store.port)
        except Exception as exc:  # noqa: BLE001 - every rank must learn of it
            err = f"{type(exc).__name__}: {exc}"
    addr, err = world.bcast_object((addr, err), root=0)
    if err is not None:
        raise CommError(f"rank 0 could not start the TCPStore: {err}", rank=world.rank,
                        op="init_process_group")
    if world.rank != 0:
        try:
            store = dist.TCPStore(addr[0], addr[1], world.size, is_master=False, timeout=timeout)
        except Exception as exc:
            raise CommError(f"cannot reach rank 0's TCPStore at {addr[0]}:{addr[1]} ({exc}); "
                            "set MASTER_ADDR/MASTER_PORT to an address every node can reach",
                            rank=world.rank, op="init_process_group") from exc
    return store


def _mpi_env_rendezvous(url: str, timeout: timedelta = timedelta(minutes=30),
                        **kwargs: Any) -> Iterator[tuple[Any, int, int]]:
    world = runtime.init().comm
    query = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
    given = {k: int(query[k]) for k in ("rank", "world_size")
             if k in query and int(query[k]) != -1}
    mpi = {"rank": world.rank, "world_size": world.size}
    if any(given[k] != mpi[k] for k in given):
        asked = ", ".join(f"{k}={v}" for k, v in given.items())
        raise InvalidArgumentError(f"init_process_group got {asked} but MPI says rank="
                                   f"{world.rank}, world_size={world.size}; drop them (under "
                                   "MPI they come from the launcher) or launch with a matching "
                                   "-n", rank=world.rank, size=world.size,
                                   op="init_process_group")
    yield _store(world, timeout), world.rank, world.size


_TORCH_ENV_HANDLER = _rdzv._rendezvous_handlers.get("env")


def _env_handler(url: str, **kwargs: Any) -> Iterator[tuple[Any, int, int]]:
    if os.environ.get("MASTER_ADDR") and _TORCH_ENV_HANDLER is not None:
        return _TORCH_ENV_HANDLER(url, **kwargs)
    return _mpi_env_rendezvous(url, **kwargs)


def register() -> None:
    """Make "hpcdl" a torch.distributed backend (idempotent; run by ``import hpcdl.torch``)."""
    if getattr(dist.Backend, "HPCDL", None) == BACKEND and "HPCDL" in dist.Backend._plugins:
        return
    dist.Backend.register_backend(BACKEND, _create, extended_api=True, devices=["cpu", "cuda"])
    # torch has no public way to extend env:// (register_rendezvous_handler refuses
    # a scheme it knows), so the handler is replaced in its table; it falls back
    # to torch's own whenever MASTER_ADDR is set.
    _rdzv._rendezvous_handlers["env"] = _env_handler


def init_process_group(**kwargs: Any) -> None:
    """``torch.distributed.init_process_group("hpcdl", **kwargs)``, for short."""
    register()
    dist.init_process_group(BACKEND, **kwargs)
