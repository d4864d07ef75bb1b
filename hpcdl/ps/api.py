"""``hpcdl.ps.setup``: one call on every rank starts a parameter server job.

    ps = hpcdl.ps.setup(named_arrays, optimizer=hpcdl.ps.Adam(lr=1e-3),
                        mode="ssp", staleness=2, num_servers=2)
    if ps.is_server:
        ps.serve()                       # returns once every worker called close()
    else:
        params = ps.pull()
        for batch in data:
            params = ps.push_pull(grads_of(params, batch))
        ps.close()

Collective over ``comm``: the ranks agree on roles and on the parameter layout
(the first worker's is the reference; a worker whose names or shapes differ
makes every rank raise the same error naming it). The first worker's values
initialise the servers, unless a reopened disk store holds values already.

``setup`` makes two communicators (a ``Dup`` for the PS traffic and a ``Split`` into
workers and servers, ``worker_comm``); a worker's ``close()`` frees them (use
``worker_comm`` before it), a server's ``serve()`` frees them when every worker has
closed, and ``close()`` does on either role (so does a ``setup`` that raises).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InvalidArgumentError, MismatchError
from . import optim
from .roles import make_roles
from .sharding import DEFAULT_CHUNK_ELEMS, plan_shards
from .store import make_store

__all__ = ["setup", "MODES"]

MODES = ("sync", "async", "ssp")


def _layout(params: Any) -> list[tuple[str, tuple[int, ...], str]] | None:
    if params is None:
        return None
    items = params.items() if isinstance(params, Mapping) else params
    from .worker import as_numpy

    return [(str(n), tuple(int(d) for d in as_numpy(a).shape), as_numpy(a).dtype.name)
            for n, a in items]


def _first_difference(ref: list, mine: list) -> str:
    ref_d = {n: s for n, s, _ in ref}
    mine_d = {n: s for n, s, _ in mine}
    for n, s, _ in ref:
        if n not in mine_d:
            return f"parameter {n!r} (shape {s} on the servers) is missing"
        if mine_d[n] != s:
            return f"parameter {n!r} has shape {mine_d[n]}, the servers hold shape {s}"
    extra = [n for n in mine_d if n not in ref_d]
    return f"unknown parameters {extra}"


def setup(params: "Mapping[str, Any] | Sequence[tuple[str, Any]] | None" = None, *,
          optimizer: Any, mode: str = "sync", staleness: int = 0, num_servers: int = 1,
          server_ranks: Sequence[int] | None = None, store: Any = "memory",
          path: Any = None, comm: Any = None, timeout: float = 120.0,
          chunk_elems: int = DEFAULT_CHUNK_ELEMS, compression: str | None = None,
          on_failure: str = "abort") -> Any:
    """Returns a :class:`~hpcdl.ps.server.Server` on server ranks and a
    :class:`~hpcdl.ps.worker.Worker` (already holding the servers' parameters) on
    workers. ``params``: named arrays or tensors (required on workers, ignored on
    servers). ``optimizer``: :class:`SGD`, :class:`Adam` or a torch SGD/Adam.
    ``store``: ``"memory"`` or ``"disk"`` (server ``i`` keeps ``path/server<i>``).
    ``on_failure`` (fault-tolerant mode, ``HPCDL_FT=1``): a dead worker ends the job
    (``"abort"``) or the servers go on without it (``"shrink"``; hpcdl/ps/lost.py);
    a dead server always ends the job (its shard is not replicated)."""
    from ..runtime import default_comm

    base = default_comm(comm)
    rank, size = base.rank, base.size

    def bad(msg: str) -> InvalidArgumentError:
        return InvalidArgumentError(msg, rank=rank, size=size, op="ps.setup")

    if mode not in MODES:
        raise bad(f"mode={mode!r}; choose from {', '.join(MODES)}")
    if not isinstance(staleness, int) or staleness < 0:
        raise bad(f"staleness={staleness!r}; must be an integer >= 0")
    if mode == "sync" and staleness:
        raise bad("staleness applies to mode='ssp' (sync is ssp with staleness 0)")
    if compression not in (None, "none", "fp16"):
        raise bad(f"compression={compression!r}; use None or 'fp16'")
    if on_failure not in ("abort", "shrink"):
        raise bad(f"on_failure={on_failure!r}; use 'abort' or 'shrink'")
    if not timeout > 0:
        raise bad(f"timeout={timeout!r}; must be > 0 seconds")
    if not isinstance(optimizer, (optim.SGD, optim.Adam)):
        optimizer = optim.from_torch(optimizer)
    roles = make_roles(base, num_servers, server_ranks)
    try:
        return _start(roles, params, optimizer, mode, staleness, store, path, timeout,
                      chunk_elems, compression, bad, on_failure)
    except BaseException:
        roles.free()  # a refused layout raises on every rank alike: none keeps the two
        raise


def _start(roles: Any, params: Any, optimizer: Any, mode: str, staleness: int, store: Any,
           path: Any, timeout: float, chunk_elems: int, compression: str | None,
           bad: Any, on_failure: str = "abort") -> Any:
    """setup's collective part, on the communicators ``roles`` holds."""
    rank, size = roles.rank, roles.size
    mine = None if roles.is_server else _layout(params)
    layouts = roles.mpi.allgather(mine)   # on the PS communicator: every rank, both kinds
    missing = [w for w in roles.workers if layouts[w] is None]
    if missing:   # raised on every rank alike: nobody is left waiting
        raise bad(f"worker ranks {missing} passed no params (workers must pass named arrays "
                  "or tensors)")
    ref = layouts[roles.first_worker]
    for w in roles.workers:
        if layouts[w] != ref:
            raise MismatchError(f"worker rank {w}: {_first_difference(ref, layouts[w])} "
                                f"(reference: worker rank {roles.first_worker})", rank=rank,
                                size=size, op="ps.setup")
    dtypes = {d for _, _, d in ref}
    if len(dtypes) != 1 or next(iter(dtypes)) not in ("float32", "float64"):
        raise bad(f"the served parameters must share one dtype, float32 or float64; got "
                  f"{sorted(dtypes)}")
    plan = plan_shards([n for n, _, _ in ref], [s for _, s, _ in ref], np.dtype(dtypes.pop()),
                       len(roles.servers), chunk_elems)
    if roles.is_server:
        from .server import Server

        st = make_store(store, path, roles.index, rank)
        return Server(roles, plan, optimizer, mode, staleness if mode == "ssp" else 0, st,
                      timeout, compression, on_failure)
    from .worker import Worker, as_numpy

    worker = Worker(roles, plan, timeout, None if compression == "none" else compression,
                    on_failure)
    if rank == roles.first_worker:
        from mpi4py import MPI

        from .protocol import TAG_INIT, PSTimeoutError, poll

        items = params.items() if isinstance(params, Mapping) else params
        flat = {n: np.ravel(as_numpy(a)) for n, a in items}
        bufs = [plan.pack(i, flat, np.empty(plan.shard_size(i), plan.dtype))
                for i in range(plan.num_servers)]
        reqs = [roles.mpi.Isend([b.view(np.uint8), MPI.BYTE], s, TAG_INIT)
                for b, s in zip(bufs, roles.servers)]
        from ..watchdog import waiting

        with waiting("ps.setup", roles.mpi, roles.servers):
            arrived = poll(lambda: MPI.Request.Testall(reqs), timeout)
        if not arrived:
            raise PSTimeoutError(f"servers {list(roles.servers)} did not take the initial "
                                 f"parameters within {timeout} s", rank=rank, size=size,
                                 op="ps.setup")
    worker.pull()
    return worker
