"""Who serves and who trains: split a communicator into S servers and W workers.

By default the *last* ``num_servers`` ranks serve, so rank 0 (which usually
loads data and writes results) stays a worker; ``server_ranks=[...]`` picks
them explicitly. The parameter server talks on its own ``Dup`` of the job's
communicator, so its point-to-point traffic never matches a receive posted by a
collective or by user code, whatever order ranks start in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import InvalidArgumentError
from ..runtime import default_comm
from ..ulfm import errors_return

__all__ = ["Roles", "make_roles"]


@dataclass(frozen=True)
class Roles:
    """This rank's place in the parameter server job."""

    mpi: Any                      # mpi4py communicator (a Dup) carrying all PS traffic
    rank: int                     # rank in ``mpi``
    size: int
    servers: tuple[int, ...]      # ranks that serve, in server-index order
    workers: tuple[int, ...]      # ranks that train, in worker-index order
    group: Any                    # hpcdl communicator of my kind (workers or servers)

    @property
    def is_server(self) -> bool:
        return self.rank in self.servers

    @property
    def index(self) -> int:
        """My server index (servers) or worker index (workers)."""
        return (self.servers if self.is_server else self.workers).index(self.rank)

    @property
    def first_worker(self) -> int:
        return self.workers[0]

    def free(self) -> None:
        """Free the two communicators :func:`make_roles` made (idempotent).

        ``MPI_Comm_free`` is collective in MPI's sense: every rank frees its handles
        once, but nobody waits for the others (a worker frees at its close while the
        servers still serve other workers). Messages already sent complete normally.
        """
        from mpi4py import MPI

        if self.group.executor is not None:  # async work queued on worker_comm finishes first
            self.group.executor.close()
        for comm in (self.group.mpi, self.mpi):
            if comm != MPI.COMM_NULL:
                comm.Free()   # mpi4py sets the object to COMM_NULL: a second free skips it

    @property
    def freed(self) -> bool:
        from mpi4py import MPI

        return self.mpi == MPI.COMM_NULL


def make_roles(comm: Any = None, num_servers: int = 1,
               server_ranks: Sequence[int] | None = None) -> Roles:
    """Collective over ``comm`` (default: hpcdl's communicator)."""
    from ..comm.mpi import MPICommunicator

    base = default_comm(comm)
    rank, size = base.rank, base.size
    if size < 2:
        raise InvalidArgumentError(f"a parameter server needs at least 2 ranks (1 server and "
                                   f"1 worker); this job has {size}", rank=rank, size=size,
                                   op="ps.setup")
    if server_ranks is None:
        if not isinstance(num_servers, int) or not 1 <= num_servers <= size - 1:
            raise InvalidArgumentError(f"num_servers={num_servers!r}; with {size} ranks use 1.."
                                       f"{size - 1} (at least one rank must train)", rank=rank,
                                       size=size, op="ps.setup")
        servers = tuple(range(size - num_servers, size))
    else:
        servers = tuple(int(r) for r in server_ranks)
        if (len(set(servers)) != len(servers) or not servers or len(servers) >= size
                or any(not 0 <= r < size for r in servers)):
            raise InvalidArgumentError(f"server_ranks={list(server_ranks)}; give 1..{size - 1} "
                                       f"distinct ranks of 0..{size - 1}", rank=rank, size=size,
                                       op="ps.setup")
    workers = tuple(r for r in range(size) if r not in servers)
    mpi = base.mpi.Dup()     # both freed by Roles.free (the worker's or server's close)
    errors_return(mpi)       # FT mode: a dead peer is an error to handle (Split inherits it)
    group = MPICommunicator(mpi.Split(1 if rank in servers else 0, rank))
    group.cuda_aware = getattr(base, "cuda_aware", False)
    return Roles(mpi=mpi, rank=rank, size=size, servers=servers, workers=workers, group=group)
