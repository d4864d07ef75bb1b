"""``hpcdl model measure``: the timings the cost model is fitted to.

Inside a job (any rank count) it measures, and rank 0 merges into a JSON file
under ``runs[<rank count>]``:

* ``pingpong``: half the round trip of a message between ranks 0 and 1, per
  size: the transport's own alpha and beta;
* ``links`` (several nodes): the same ping-pong per kind of link, ``shm`` between
  rank 0 and a rank on its node, ``net`` between rank 0 and the first rank of
  the next node (fitted per kind by :mod:`hpcdl.model.links`);
* ``reduce``: one local reduction (``numpy.add`` in place, float32) per size
  from 64 KiB: gamma, in and out of cache;
* ``allreduce``: every flat algorithm (``hpcdl.allreduce(algorithm=...)``)
  per size, the median of the slowest rank's time (``hpcdl.tune.time_op``),
  best of ``--rounds`` rounds; each round visits every size and algorithm in
  rotated order, and every round's time is kept (``allreduce_rounds``) so
  ``hpcdl model`` can show how much the measurement itself moved; across
  several nodes also ``hierarchical``.

A run on one node is stored under ``runs["<ranks>"]``, one across nodes under
``runs["<ranks>@<nodes>x<ranks per node>"]`` (2x2 and 4x1 both have 4 ranks).

Outside a job it launches itself at each of ``--ranks`` (like ``hpcdl tune``).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_text
from ..runtime import init
from ..collectives import allreduce
from ..tune import time_op
from ..tuning.costs import FLAT
from ..tuning.data import DEFAULT_MEASUREMENTS, load_measurements, user_measurements_path

__all__ = ["measure_here", "merge_run", "load_measurements", "user_measurements_path",
           "run_key", "single_node", "DEFAULT_MEASUREMENTS"]


def _pingpong(comm: Any, sizes: list[int], reps: int, peer: int = 1) -> list[list[float]]:
    """Half round trips between rank 0 and ``peer`` (every rank takes part in the barriers)."""
    rows = []
    for nbytes in sizes:
        buf = np.zeros(max(1, nbytes), np.uint8)
        # big messages over a slow link: fewer repetitions (a 16 MiB round trip at
        # 1 Gbit/s takes 0.27 s)
        n_reps = max(2, min(reps, int(reps * (1 << 20) // max(nbytes, 1))))
        best = float("inf")
        for _ in range(3):
            comm.barrier()
            t0 = time.perf_counter()
            for _ in range(n_reps):
                if comm.rank == 0:
                    comm.send(buf, peer, 77)
                    comm.recv(buf, peer, 77)
                elif comm.rank == peer:
                    comm.recv(buf, 0, 77)
                    comm.send(buf, 0, 77)
            best = min(best, (time.perf_counter() - t0) / n_reps / 2)
        rows.append([nbytes, best])
    return rows


def _link_pingpongs(ctx: Any, sizes: list[int], reps: int) -> dict[str, list[list[float]]]:
    """``{"shm": rows, "net": rows}``: ping-pong over each kind of link this job has."""
    nodes = ctx.comm.allgather_object(ctx.node)
    out = {}
    same = [r for r in range(1, len(nodes)) if nodes[r] == nodes[0]]
    other = [r for r in range(1, len(nodes)) if nodes[r] != nodes[0]]
    for kind, peers in (("shm", same), ("net", other)):
        if peers:
            out[kind] = _pingpong(ctx.comm, sizes, reps, peer=peers[0])
    return out


def run_key(record: dict[str, Any]) -> str:
    """Where a run is stored: ``"4"`` on one node, ``"4@2x2"`` across 2 nodes of 2."""
    nodes = int(record.get("nodes") or 1)
    if nodes == 1:
        return str(record["ranks"])
    return f"{record['ranks']}@{nodes}x{record['ranks_per_node']}"


def single_node(run: dict[str, Any]) -> bool:
    return int(run.get("nodes") or 1) == 1


def _reduce(sizes: list[int]) -> list[list[float]]:
    rows = []
    for nbytes in sizes:
        a = np.random.default_rng(0).random(nbytes // 4, dtype=np.float32)
        b = a.copy()
        reps = max(3, int(2e8 // max(nbytes, 1)))
        np.add(a, b, out=a)
        t0 = time.perf_counter()
        for _ in range(reps):
            np.add(a, b, out=a)
        rows.append([nbytes, (time.perf_counter() - t0) / reps])
    return rows


def measure_here(sizes: list[int], rounds: int = 3, budget_s: float = 0.05,
                 algorithms: tuple[str, ...] = FLAT) -> dict[str, Any]:
    """Collective over the default communicator; returns the run's record on every rank."""
    ctx = init()
    comm = ctx.comm
    if ctx.num_nodes > 1 and "hierarchical" not in algorithms:
        algorithms = (*algorithms, "hierarchical")
    big = [s for s in sizes if s >= 1 << 16] or sizes[-1:]
    record: dict[str, Any] = {
        "ranks": comm.size, "ranks_per_node": ctx.local_size, "nodes": ctx.num_nodes,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(), "mpi": ctx.mpi_library,
        "pingpong": _pingpong(comm, [s for s in sizes if s <= 16 << 20],
                              reps=20) if comm.size > 1 else [],
        "reduce": _reduce(big), "allreduce": {}}
    if ctx.num_nodes > 1:
        record["links"] = _link_pingpongs(ctx, [s for s in sizes if s <= 16 << 20], reps=20)
    # Rounds are the outer loop, and each round visits the sizes and algorithms in a
    # rotated order: a shared node's speed drifts over minutes (2-3x on the CI VM), and
    # measuring each size in its own stretch of time turned that drift into a fake
    # dependence on size. Every round's time is kept: the spread shows the noise.
    times: dict[str, dict[int, list[float]]] = {a: {n: [] for n in sizes} for a in algorithms}
    buffers = {n: np.zeros(max(1, n // 4), np.float32) for n in sizes}
    for rnd in range(rounds):
        for i in range(len(sizes)):
            nbytes = sizes[(i + rnd) % len(sizes)]
            buf = buffers[nbytes]
            for k in range(len(algorithms)):
                name = algorithms[(k + rnd) % len(algorithms)]
                seconds = time_op(comm, lambda name=name: allreduce(buf, algorithm=name,
                                                                          comm=comm),
                                  budget_s=budget_s, min_iters=3)
                times[name][nbytes].append(seconds)
        if comm.rank == 0:
            print(f"n={comm.size} round {rnd + 1}/{rounds} done", flush=True)
    if comm.rank == 0:
        for nbytes in sizes:
            row = "  ".join(f"{a} {min(times[a][nbytes]) * 1e6:9.1f}" for a in algorithms)
            print(f"n={comm.size} {nbytes:>10d} B  {row} us (best of {rounds})", flush=True)
    # the fit uses the best round; every round is kept for the spread
    record["allreduce"] = {a: [[n, min(ts)] for n, ts in sorted(times[a].items())]
                           for a in algorithms}
    record["allreduce_rounds"] = {a: [[n, ts] for n, ts in sorted(times[a].items())]
                                  for a in algorithms}
    return record


def merge_run(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Put ``record`` under ``runs[run_key(record)]`` of the file at ``path`` (atomically)."""
    data = json.loads(path.read_text()) if path.is_file() else {"version": 1, "runs": {}}
    data["runs"][run_key(record)] = record
    data["source"] = (f"hpcdl model measure on {socket.gethostname()}, "
                      f"{datetime.datetime.now().isoformat(timespec='seconds')}, {record['mpi']}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return data
