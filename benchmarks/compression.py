"""FP16Compressor on the CPU against torch's plain casts, and its allreduce against float32.

    python benchmarks/compression.py [--numel 1100000] [--iters 30] [--json out.json]
    hpcdl launch -n 2 -- python benchmarks/compression.py     # adds the collectives

One flat float32 gradient buffer (default 1.1 M elements: the synthetic
benchmark's ``small_cnn``, one bucket). Rows, all medians of ``--iters`` timed
calls after a warm-up, measured in the same run:

* ``plain .half()`` / ``plain .float()``: torch's casts, the peer (what Horovod's
  ``Compression.fp16`` does on each side);
* ``fp16 compress`` / ``fp16 decompress``: hpcdl's scaled FP16 on torch tensors
  (per-chunk max |x|, the max-allreduce of the chunk maxima, scale and cast);
* ``fp16 compress numpy``: the same on a NumPy array (the reference functions);
* with more than one rank: ``allreduce float32`` (what ``Compression.none``
  sends), ``allreduce float16 payload``, and the whole fp16 round trip
  ``compress + allreduce + decompress``.

Each rank runs with torch's intra-op threads as the launcher leaves them (one
per rank under ``hpcdl launch``). On a shared machine compare rows of one run,
not runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import hpcdl
from hpcdl.compression import FP16Compressor


def _time(fn: Callable[[], Any], iters: int, comm: Any) -> float:
    """Median milliseconds per call; ranks start each call together."""
    fn()
    times = []
    for _ in range(iters):
        hpcdl.barrier(comm=comm)
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def run(numel: int, iters: int, chunk: int) -> list[dict[str, Any]]:
    ctx = hpcdl.init()
    comm = ctx.comm
    gen = torch.Generator().manual_seed(1 + comm.rank)
    x = torch.randn(numel, generator=gen) * 1e-3
    comp = FP16Compressor(chunk_size=chunk, comm=comm)
    payload, cctx = comp.compress(x)
    half = x.half()
    xn = x.numpy()
    rows: list[tuple[str, Callable[[], Any], int]] = [
        ("plain .half()", lambda: x.half(), numel * 6),
        ("plain .float()", lambda: half.float(), numel * 6),
        ("fp16 compress", lambda: comp.compress(x), numel * 6),
        ("fp16 decompress", lambda: comp.decompress(payload, cctx), numel * 6),
        ("fp16 compress numpy", lambda: comp.compress(xn), numel * 6),
    ]
    if comm.size > 1:
        def round_trip() -> Any:
            p, c = comp.compress(x)
            hpcdl.allreduce(p, op="sum", comm=comm)
            return comp.decompress(p, c)

        rows += [("allreduce float32", lambda: hpcdl.allreduce(x.clone(), comm=comm), numel * 4),
                 ("allreduce float16 payload",
                  lambda: hpcdl.allreduce(payload.clone(), comm=comm), numel * 2),
                 ("fp16 compress+allreduce+decompress", round_trip, numel * 2)]
    out = []
    for name, fn, nbytes in rows:
        ms = _time(fn, iters, comm)
        out.append({"op": name, "bytes": nbytes, "ms": ms})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=1_100_000)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--chunk", type=int, default=8192, help="FP16Compressor chunk_size")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    rows = run(args.numel, args.iters, args.chunk)
    ctx = hpcdl.get_context()
    if ctx.rank == 0:
        peer = next(r["ms"] for r in rows if r["op"] == "plain .half()")
        print(f"{ctx.size} rank(s), {args.numel:,} float32 elements, chunk {args.chunk}, "
              f"torch threads {torch.get_num_threads()}, median of {args.iters}")
        head = f"{'operation':<38}{'bytes':>12}{'ms':>10}{'vs .half()':>12}"
        print(head + "\n" + "-" * len(head))
        for r in rows:
            print(f"{r['op']:<38}{r['bytes']:>12,}{r['ms']:>10.3f}{r['ms'] / peer:>11.2f}x")
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": rows, "args": vars(args),
                                                   "ranks": ctx.size}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
