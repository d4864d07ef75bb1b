"""One rank's uncaught exception is reported (rank, traceback, message) before the
job ends, even though torch's ``init_process_group`` chains an excepthook in front of
hpcdl's that points ``sys.stderr`` at a StringIO while hpcdl's hook runs (MPI_Abort
used to end the process with the report still in that buffer)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HPCDL = str(Path(sys.executable).parent / "hpcdl")

_PRELUDE = """
import torch, torch.distributed as dist
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
"""

# Each script trains one step, then rank 1 raises while rank 0 waits in a barrier
# (so only the abort can end rank 0: a report lost there means no report at all).
SCRIPTS = {
    "ddp": _PRELUDE + """
import hpcdl.torch
dist.init_process_group("hpcdl")
ddp = torch.nn.parallel.DistributedDataParallel(model)
ddp(torch.randn(4, 8)).sum().backward()
if dist.get_rank() == 1:
    raise ValueError("boom on rank 1 (ddp)")
dist.barrier()
""",
    "fsdp2": _PRELUDE + """
import hpcdl.torch
from torch.distributed.fsdp import fully_shard
dist.init_process_group("hpcdl")
fully_shard(model)
model(torch.randn(4, 8)).sum().backward()
if dist.get_rank() == 1:
    raise ValueError("boom on rank 1 (fsdp2)")
dist.barrier()
""",
    "horovod": _PRELUDE + """
import hpcdl.horovod.torch as hvd
hvd.init()
opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                               named_parameters=model.named_parameters())
model(torch.randn(4, 8)).sum().backward()
opt.step()
if hvd.rank() == 1:
    raise ValueError("boom on rank 1 (horovod)")
hvd.allreduce(torch.ones(1), name="after")
""",
}


@pytest.mark.spawns
@pytest.mark.parametrize("front_end", sorted(SCRIPTS))
def test_uncaught_exception_is_reported_naming_the_rank(tmp_path: Path, front_end: str):
    script = tmp_path / f"{front_end}.py"
    script.write_text(SCRIPTS[front_end])
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMPI_", "PMIX_", "PRTE_", "MASTER_"))}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.run([HPCDL, "launch", "-n", "2", "--", "python", str(script)],
                          capture_output=True, text=True, timeout=240, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "[hpcdl rank 1/2] uncaught exception" in out, out[-3000:]
    assert f"ValueError: boom on rank 1 ({front_end})" in out, out[-3000:]
    assert "Traceback (most recent call last)" in out, out[-3000:]
