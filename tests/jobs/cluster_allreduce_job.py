"""Every allreduce algorithm across emulated nodes, against NumPy (tests/test_cluster_jobs.py).

    hpcdl launch -n 4 -- --map-by ppr:2:node -- python tests/jobs/cluster_allreduce_job.py NODES

Each rank rebuilds every rank's input from (seed, rank) and checks the result locally;
failures are collected and raised after the last collective (so no rank is left
waiting), which ends the job non-zero naming the rank. NODES: the node count the job
must see (hpcdl.init()'s layout, which the hierarchical algorithm uses).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/
import hpcdl  # noqa: E402

from helpers.numpy_reference import (Failures, all_inputs, close, ops_for,  # noqa: E402
                                     reduce_reference)

ALGORITHMS = ("native", "chunked", "ring", "tree", "hierarchical", "auto")
# float16/bfloat16 are left out: ring and tree round after every step and have their
# own tolerances (tests/test_algorithms.py); here the link, not the rounding, is tested.
DTYPES = ("float32", "float64", "int32")
COUNTS = (1, 1009, 20011)
BIG = (1 << 19) + 3   # 2 MiB of float32 (sum and avg only): several ring chunks per block


def main() -> None:
    expected_nodes = int(sys.argv[1])
    ctx = hpcdl.init()
    fails = Failures()
    fails.expect("layout", ctx.num_nodes == expected_nodes,
                 f"rank {ctx.rank} sees {ctx.num_nodes} node(s), expected {expected_nodes}")
    seed = 0
    for alg in ALGORITHMS:
        for dtype in DTYPES:
            for op in ops_for(dtype):
                big = (BIG,) if dtype == "float32" and op in ("sum", "avg") else ()
                for count in COUNTS + big:
                    seed += 1
                    xs = all_inputs(seed, ctx.size, (count,), dtype, op)
                    y = xs[ctx.rank].copy()
                    hpcdl.allreduce(y, op=op, algorithm=alg)
                    ref = reduce_reference(xs, op)
                    fails.check(f"rank {ctx.rank} {alg} {dtype} {op} {count}",
                                lambda y=y, ref=ref, xs=xs, op=op: close(y, ref, xs, op))
    checked = seed
    fails.assert_none()
    hpcdl.barrier()
    if ctx.rank == 0:
        print(f"cluster allreduce: {checked} cases x {ctx.size} ranks on {ctx.num_nodes} nodes ok")


if __name__ == "__main__":
    main()
