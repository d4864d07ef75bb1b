"""A fresh job that checks every communicator's node layout against the job's
(tests/helpers/node_layout.py); run with HPCDL_RANKS_PER_NODE for emulated nodes."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for helpers

import hpcdl  # noqa: E402
from helpers.node_layout import layout_errors  # noqa: E402

ctx = hpcdl.init()
errors = layout_errors(ctx)
every = ctx.comm.allgather_object(errors)
if any(every):
    print(f"rank {ctx.rank}: layouts differ: {every}", flush=True)
    sys.exit(1)
print(f"layout ok {ctx.rank} {ctx.size} {ctx.num_nodes}", flush=True)
