"""Allreduce benchmark: hpcdl's algorithms against native MPI and torch gloo, same run.

    hpcdl launch -n 4 -- python benchmarks/allreduce.py [--json out.json]
        [--sizes 4,4096,...] [--algorithms auto,chunked,ring,tree] [--dtype float32]
        [--device cpu|cuda] [--no-peers] [--budget 0.25] [--rounds 3]

Columns as nccl-tests: size (bytes), count (elements), dtype, algorithm,
time (us: median over the iterations of the slowest rank's time, best of
``--rounds`` rounds that rotate the order of the cases), algbw
(size / time) and busbw (algbw * 2 (n - 1) / n, comparable across rank
counts). Rows: ``hpcdl`` (``hpcdl.allreduce`` with each ``--algorithms``
entry), ``mpi`` (``MPI_Allreduce`` in place through mpi4py) and ``gloo``
(``torch.distributed.all_reduce``, when torch is installed). ``--device cuda``
uses CuPy device buffers (and torch CUDA tensors with gloo).

``auto`` learns online (hpcdl/collectives/online.py): before its rows are
timed, each size runs ``auto`` until it has settled (trials over and a first
drift check passed, which may re-try them), and that cost is
reported on its own (``# auto trials`` lines: calls, time, and the time over
the same number of calls of the winner); the row's algorithm reads
``auto>winner``, the winner after the timed rounds (a drift check may have
re-tried). ``--fresh-tuning`` ignores the cache of earlier jobs (else a
second run reuses their choices and has no trials). A closing table gives each
size's ``auto`` time over the best of every other row.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from typing import Any, Callable

import numpy as np
from mpi4py import MPI

import hpcdl
from hpcdl.collectives import online
from hpcdl.tune import powers_of_4, time_op

HEADER = (f"{'size(B)':>12} {'count':>11} {'dtype':>8} {'impl':>5} {'algorithm':>12} "
          f"{'time(us)':>11} {'algbw(GB/s)':>12} {'busbw(GB/s)':>12}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                   default=powers_of_4(4, 64 << 20), help="bytes, comma separated")
    p.add_argument("--algorithms", default="auto,chunked,ring,tree",
                   help="hpcdl algorithms to time, comma separated (hierarchical is added "
                        "when the job spans several nodes)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16",
                                                          "bfloat16", "int32", "int64"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--no-peers", action="store_true", help="skip native MPI and gloo")
    p.add_argument("--budget", type=float, default=0.15,
                   help="seconds of timed iterations per row (fewer for huge sizes)")
    p.add_argument("--rounds", type=int, default=3,
                   help="repeat every case this many times, order rotated; keep the best")
    p.add_argument("--fresh-tuning", action="store_true",
                   help="auto: ignore the tuning cache of earlier jobs (trials at every size)")
    p.add_argument("--json", metavar="FILE", help="write the rows as a JSON list")
    return p.parse_args(argv)


def make_buffer(count: int, dtype: np.dtype, device: str) -> Any:
    # zeros: a sum of zeros stays zero, so thousands of in-place iterations never overflow
    if device == "cuda":
        import cupy

        return cupy.zeros(count, dtype)
    return np.zeros(count, dtype)


def start_gloo(comm: Any) -> Any:
    """torch.distributed over gloo, rendezvous on a port rank 0 picks; None without torch."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        return None
    # One thread per rank: OpenMP workers that spin after each gloo reduction would
    # otherwise steal the cores from the MPI ranks timed next (ranks >= cores here).
    torch.set_num_threads(1)
    port = 0
    if comm.rank == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    port = comm.bcast_object(port, 0)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", init_method="env://", rank=comm.rank, world_size=comm.size)
    return torch


def row(impl: str, algorithm: str, n: int, dtype: str, nbytes: int, count: int,
        seconds: float) -> dict[str, Any]:
    algbw = nbytes / seconds / 1e9 if seconds > 0 else 0.0
    return {"impl": impl, "algorithm": algorithm, "ranks": n, "dtype": dtype, "bytes": nbytes,
            "count": count, "time_us": seconds * 1e6, "algbw_GBps": algbw,
            "busbw_GBps": algbw * 2 * (n - 1) / n}


def show(r: dict[str, Any]) -> str:
    return (f"{r['bytes']:>12d} {r['count']:>11d} {r['dtype']:>8} {r['impl']:>5} "
            f"{r['algorithm']:>12} {r['time_us']:>11.1f} {r['algbw_GBps']:>12.3f} "
            f"{r['busbw_GBps']:>12.3f}")


def run_trials(comm: Any, buf: Any, nbytes: int, n: int) -> dict[str, Any]:
    """Call ``auto`` on ``buf`` until its size class has settled (trials over, and the
    first drift check passed: it may re-try when the trials ran under other load than
    now); what that cost."""
    t0 = time.perf_counter()
    calls = 0
    tuner = online.existing(comm)
    while online.enabled() and n > 1 and (
            tuner is None or not tuner.slot(buf.nbytes, buf.dtype).settled):
        hpcdl.allreduce(buf, algorithm="auto")
        calls += 1
        tuner = online.existing(comm)
    seconds = time.perf_counter() - t0
    slot = tuner.slot(buf.nbytes, buf.dtype) if tuner is not None else None
    winner = slot.winner if slot is not None else None
    # the time over as many calls of the winner, at the speed the drift check saw
    extra = seconds - calls * slot.seconds if slot is not None else 0.0
    out = {"bytes": nbytes, "calls": calls, "seconds": seconds, "over_winner_s": extra,
           "winner": winner, "source": slot.source if slot is not None else "off"}
    if comm.rank == 0:
        print(f"# auto trials {nbytes} B: {calls} calls, {seconds * 1e3:.2f} ms "
              f"({extra * 1e3:.2f} ms over {calls} calls of the winner), "
              f"{winner} ({out['source']})", flush=True)
    return out


def summary(rows: list[dict[str, Any]], trials: list[dict[str, Any]]) -> None:
    """``auto`` against the best other row of each size (same run)."""
    autos = {r["bytes"]: r for r in rows if r["algorithm"].startswith("auto")}
    if not autos:
        return
    print(f"# {'size(B)':>10} {'auto(us)':>10} {'best(us)':>10} {'best':>14} {'auto/best':>9}")
    for nbytes, a in autos.items():
        others = [r for r in rows if r["bytes"] == nbytes and r is not a and r["impl"] != "gloo"]
        if not others:
            continue
        b = min(others, key=lambda r: r["time_us"])
        print(f"# {nbytes:>10d} {a['time_us']:>10.1f} {b['time_us']:>10.1f} "
              f"{b['impl'] + ':' + b['algorithm']:>14} {a['time_us'] / b['time_us']:>9.3f}")
    spent = sum(t["seconds"] for t in trials)
    over = sum(t["over_winner_s"] for t in trials)
    print(f"# auto trials in all: {sum(t['calls'] for t in trials)} calls, {spent * 1e3:.1f} ms, "
          f"{over * 1e3:.1f} ms over the winners", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    ctx = hpcdl.init()
    comm, n = ctx.comm, ctx.size
    dtype = np.dtype(hpcdl.ops.SUPPORTED_DTYPES[args.dtype])
    algorithms = [a for a in args.algorithms.split(",") if a]
    if ctx.num_nodes > 1 and "hierarchical" not in algorithms:
        algorithms.append("hierarchical")
    torch = None if args.no_peers else start_gloo(comm)
    mpi_type = {np.dtype(np.float32): MPI.FLOAT, np.dtype(np.float64): MPI.DOUBLE,
                np.dtype(np.int32): MPI.INT32_T, np.dtype(np.int64): MPI.INT64_T}.get(dtype)
    if ctx.rank == 0:
        print(f"# allreduce, {n} ranks ({ctx.num_nodes} node(s)), {ctx.mpi_library}, "
              f"device {args.device}, hpcdl algorithms {','.join(algorithms)}")
        print(HEADER, flush=True)
    rows: list[dict[str, Any]] = []
    if "auto" in algorithms and args.fresh_tuning and online.enabled():
        online.install(comm, use_cache=False)
    # auto's trials first, for every size, before anything runs gloo (whose threads
    # linger and would slow the trials down, as they do a training job's first steps)
    trials = [run_trials(comm, make_buffer(max(1, b // dtype.itemsize), dtype, args.device), b, n)
              for b in (args.sizes if "auto" in algorithms else [])]
    for nbytes in args.sizes:
        count = max(1, nbytes // dtype.itemsize)
        nbytes = count * dtype.itemsize
        buf = make_buffer(count, dtype, args.device)
        # big messages: fewer iterations (at least 5), so 64 MiB at 4 ranks stays ~1 s a row
        budget = args.budget if nbytes < (4 << 20) else args.budget * 2
        cases: list[tuple[str, str, Callable[[], Any]]] = [
            ("hpcdl", a, (lambda a=a: hpcdl.allreduce(buf, algorithm=a))) for a in algorithms]
        if not args.no_peers and mpi_type is not None:
            host = buf if args.device == "cpu" else None
            if host is not None:
                cases.append(("mpi", "native",
                              lambda: comm.mpi.Allreduce(MPI.IN_PLACE, [host, mpi_type], MPI.SUM)))
        if torch is not None:
            tensor = torch.from_numpy(buf) if args.device == "cpu" else torch.as_tensor(buf)
            cases.append(("gloo", "gloo", lambda: torch.distributed.all_reduce(tensor)))
        # Several rounds, the order rotated each round, best median kept: on an
        # oversubscribed node the case that runs right after gloo (whose threads
        # linger) or after a size change would otherwise pay for its neighbour.
        best = [float("inf")] * len(cases)
        for rnd in range(args.rounds):
            for k in range(len(cases)):
                i = (k + rnd) % len(cases)
                seconds = time_op(comm, cases[i][2], budget_s=budget, min_iters=5,
                                  max_iters=2000)
                best[i] = min(best[i], seconds)
        for (impl, algorithm, _), seconds in zip(cases, best):
            t = next((t for t in trials if t["bytes"] == nbytes), None) \
                if algorithm == "auto" else None
            tuner = online.existing(comm) if t is not None else None
            slot = tuner.slot(buf.nbytes, buf.dtype) if tuner is not None else None
            if slot is not None:  # what it runs now: a drift check may have re-tried
                algorithm = f"auto>{slot.winner}"
            r = row(impl, algorithm, n, args.dtype, nbytes, count, seconds)
            if t is not None:  # the trials' cost rides on the auto row, apart from its time
                r.update(trial_calls=t["calls"], trial_seconds=t["seconds"],
                         trial_over_winner_s=t["over_winner_s"], tuning=t["source"],
                         first_winner=t["winner"], retrials=slot.retrials if slot else 0)
            rows.append(r)
            if ctx.rank == 0:
                print(show(r), flush=True)
    if torch is not None:
        # all ranks together: a gloo group torn down after its peer exited can block
        comm.barrier()
        torch.distributed.destroy_process_group()
        comm.barrier()
    if ctx.rank == 0:
        summary(rows, trials)
    if ctx.rank == 0 and args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
        print(f"# wrote {args.json}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
