"""``hpcdl info``: what this job has. Under mpiexec, rank 0 prints one table for all ranks."""

from __future__ import annotations

import os
import socket
from importlib import metadata

from .runtime import Context, init

__all__ = ["collect", "render", "main"]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cupy_version() -> str:
    for d in metadata.distributions():
        name = (d.metadata.get("Name") or "").lower()
        if name == "cupy" or name.startswith("cupy-cuda"):
            return f"{d.version} ({name})"
    return "not installed"


def collect(ctx: Context) -> dict:
    """This rank's row."""
    return {"rank": ctx.rank, "node": ctx.node, "local_rank": ctx.local_rank,
            "local_size": ctx.local_size, "host": socket.gethostname(), "pid": os.getpid(),
            "gpu": "-" if ctx.gpu is None else str(ctx.gpu), "gpus": ctx.gpu_count,
            "cuda_aware": ctx.cuda_aware}


def render(ctx: Context, rows: list[dict]) -> str:
    from . import __version__

    per_node = sorted({r["local_size"] for r in rows})
    aware = {r["cuda_aware"] for r in rows}
    lines = [
        f"hpcdl {__version__}",
        f"  MPI library      {ctx.mpi_library}",
        f"  thread level     {ctx.thread_level}",
        f"  ranks            {ctx.size}",
        f"  nodes            {ctx.num_nodes} ({ctx.layout_source})",
        f"  ranks per node   {', '.join(map(str, per_node))}",
        f"  GPUs per node    {max(r['gpus'] for r in rows)}",
        f"  CUDA-aware MPI   {'yes' if ctx.cuda_aware else 'no'} ({ctx.cuda_aware_reason})"
        + ("" if len(aware) == 1 else "  [ranks disagree!]"),
        f"  versions         mpi4py {_version('mpi4py')}, numpy {_version('numpy')}, "
        f"torch {_version('torch')}, cupy {_cupy_version()}",
        "",
        f"  {'rank':>4}  {'node':>4}  {'local':>5}  {'gpu':>3}  {'pid':>8}  host",
    ]
    for r in rows:
        lines.append(f"  {r['rank']:>4}  {r['node']:>4}  {r['local_rank']:>5}  {r['gpu']:>3}  "
                     f"{r['pid']:>8}  {r['host']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ctx = init()
    rows = ctx.comm.allgather_object(collect(ctx))
    if ctx.rank == 0:
        print(render(ctx, rows), flush=True)
    return 0
