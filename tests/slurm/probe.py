"""Run by srun on every rank: hpcdl's view of the job beside Slurm's, then a checked
hierarchical allreduce across the nodes. Prints one JSON line per rank; exit 1 on a
mismatch (tests/slurm/test_local_slurm.py reads the lines)."""

from __future__ import annotations

import json
import os
import socket
import sys

import numpy as np

import hpcdl


def rank_data(rank: int, n: int, dtype: str) -> np.ndarray:
    """Rank ``rank``'s input, reproducible on every rank so each can build the reference."""
    rng = np.random.default_rng(1000 + rank)
    if dtype.startswith("int"):
        return rng.integers(-1000, 1000, n).astype(dtype)
    return rng.standard_normal(n).astype(dtype)


def main() -> int:
    ctx = hpcdl.init()
    row = {"rank": ctx.rank, "size": ctx.size, "local_rank": ctx.local_rank, "node": ctx.node,
           "num_nodes": ctx.num_nodes, "host": socket.gethostname(),
           "slurm": {k: os.environ.get(k) for k in ("SLURM_PROCID", "SLURM_LOCALID",
                                                     "SLURM_NODEID", "SLURM_NNODES",
                                                     "SLURM_NTASKS")}}
    errors = []
    # Non-power-of-two lengths, every dtype family; compared with NumPy's sum.
    for dtype in ("float32", "float64", "int32", "int64"):
        for n in (1, 7, 1000, 65_537):
            x = rank_data(ctx.rank, n, dtype)
            want = sum(rank_data(r, n, dtype).astype(np.float64 if dtype.startswith("float")
                                                     else np.int64) for r in range(ctx.size))
            got = hpcdl.allreduce(x.copy(), algorithm="hierarchical")
            tol = 1e-4 * ctx.size if dtype == "float32" else 1e-10
            if not np.allclose(got, want, rtol=tol, atol=tol):
                errors.append(f"hierarchical allreduce {dtype} n={n}: max error "
                              f"{np.max(np.abs(got - want))}")
    row["allreduce_errors"] = errors
    rows = ctx.comm.allgather_object(row)
    if ctx.rank == 0:
        for r in rows:
            print(json.dumps(r), flush=True)
    return 1 if any(r["allreduce_errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
