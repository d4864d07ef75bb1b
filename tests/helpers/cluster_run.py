"""Run a job across the nodes of jobs/local-cluster/cluster.sh from a test.

Tests that use it run only inside the cluster (``make cluster-test``): ``in_cluster()``
says whether this pytest runs there; ``layout`` "2x2" puts 2 ranks on each node from n1
on, "4x1" one rank on each of 4 nodes. The cluster's Open MPI variables are kept (unlike
job_launch, which clears them for a clean local launch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers.job_launch import run_bounded

__all__ = ["in_cluster", "cluster_nodes", "layout_args", "start_on_cluster", "run_on_cluster",
           "REPO"]

REPO = Path(__file__).resolve().parents[2]


def in_cluster() -> bool:
    return bool(os.environ.get("HPCDL_CLUSTER_NODES"))


def cluster_nodes() -> int:
    return int(os.environ.get("HPCDL_CLUSTER_NODES", "0"))


def layout_args(layout: str) -> tuple[int, list[str]]:
    """"NODESxPER_NODE" -> (ranks, mpiexec options placing them so)."""
    nodes, per_node = (int(v) for v in layout.split("x"))
    if nodes > cluster_nodes():
        raise ValueError(f"layout {layout} needs {nodes} nodes; the cluster has {cluster_nodes()}")
    return nodes * per_node, ["--map-by", f"ppr:{per_node}:node"]


def _cluster_command(layout: str, cmd: list[str]) -> tuple[list[str], dict[str, str]]:
    """``hpcdl launch -n RANKS -- --map-by ppr:K:node -- CMD`` and its environment."""
    n, opts = layout_args(layout)
    hpcdl_cli = Path(sys.executable).parent / "hpcdl"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HPCDL_TIMEOUT", None)
    return [str(hpcdl_cli), "launch", "-n", str(n), "--", *opts, "--", *cmd], env


def start_on_cluster(layout: str, cmd: list[str], **popen: object) -> subprocess.Popen:
    """Start CMD on the layout in its own process group (stop it with ``os.killpg``)."""
    full, env = _cluster_command(layout, cmd)
    return subprocess.Popen(full, env=env, cwd=REPO, text=True, start_new_session=True, **popen)


def run_on_cluster(layout: str, cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """Run CMD on the layout to its end; a job still running after ``timeout`` s is killed
    by its process group and returned with rc -9."""
    full, env = _cluster_command(layout, cmd)
    return run_bounded(full, env, timeout, cwd=REPO)[0]
