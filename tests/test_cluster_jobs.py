"""Multi-node behaviour on the emulated cluster (``make cluster-test``: 4 nodes, links at
1 Gbit/s, n4's at 100 Mbit/s): every allreduce algorithm at 2 nodes x 2 ranks and 4 x 1
against NumPy, the parameter server with its servers on one node and its workers on
another, P-Reduce with a slow node, pipeline stages on different nodes, a checkpoint
written on 2 nodes resumed on 1, and the main job in every mode.

Runs only inside jobs/local-cluster/cluster.sh; elsewhere every test skips."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers.cluster_run import REPO, cluster_nodes, in_cluster, run_on_cluster, start_on_cluster

pytestmark = [pytest.mark.spawns,
              pytest.mark.skipif(not in_cluster(), reason="not inside jobs/local-cluster/cluster.sh "
                                 "(make cluster-test)")]
EPOCHS = 3   # enough to see learning, short for CI (the 20-epoch accuracies: docs/)


def needs_nodes(n: int) -> None:
    if cluster_nodes() < n:
        pytest.skip(f"needs {n} nodes; the cluster has {cluster_nodes()}")


def train(layout: str, out: Path, *args: str, timeout: float = 300) -> dict:
    done = run_on_cluster(layout, ["python", "-m", "hpcdl.examples.train", "--threads", "1",
                                   "--epochs", str(EPOCHS), "--out", str(out), *args], timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return {**json.loads((out / "metrics.json").read_text()), "stderr": done.stderr}


def learned(metrics: dict, floor: float = 0.6) -> None:
    # 10 classes: chance is 0.1; 3 epochs of any mode reach well above `floor`
    assert len(metrics["epochs"]) == EPOCHS, metrics["epochs"]
    assert metrics["test_accuracy"] >= floor, metrics["epochs"]


@pytest.mark.parametrize("layout", ["2x2", "4x1"])
def test_every_allreduce_algorithm_across_nodes(layout):
    nodes = int(layout[0])
    needs_nodes(nodes)
    done = run_on_cluster(layout, ["python", str(REPO / "tests/jobs/cluster_allreduce_job.py"),
                                   str(nodes)], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"ranks on {nodes} nodes ok" in done.stdout, done.stdout


@pytest.mark.parametrize("mode", ["allreduce", "ps-async", "ssp"])
def test_main_job_modes_across_two_nodes(mode, tmp_path):
    needs_nodes(2)
    m = train("2x2", tmp_path, "--mode", mode)
    assert m["mode"] == mode and m["ranks"] == 4
    learned(m)


def test_parameter_servers_on_one_node_workers_on_another(tmp_path):
    # The last --num-servers ranks serve (hpcdl/ps/roles.py): ranks 2, 3 = n2, workers on n1.
    needs_nodes(2)
    m = train("2x2", tmp_path, "--mode", "ps-sync", "--num-servers", "2")
    assert m["ps"]["num_servers"] == 2 and m["ps"]["workers"] == 2, m["ps"]
    assert m["ps"]["pushes_per_server"] > 0, m["ps"]
    learned(m)


def test_preduce_with_one_node_on_a_tenth_of_the_rate(tmp_path):
    # make cluster-test gives n4 100 Mbit/s against the others' 1 Gbit/s
    needs_nodes(4)
    if os.environ.get("HPCDL_CLUSTER_SLOW_NODE", "0") == "0":
        pytest.skip("no slow node in this cluster (--slow-node)")
    m = train("4x1", tmp_path, "--mode", "preduce", "--group-size", "2")
    assert m["mode"] == "preduce" and m["ranks"] == 4
    assert m["preduce"]["groups"] > 0, m["preduce"]
    learned(m, 0.5)


def test_pipeline_stages_on_different_nodes(tmp_path):
    # one rank per node: every stage boundary (and the replicas' allreduce) crosses a link
    needs_nodes(4)
    m = train("4x1", tmp_path, "--mode", "pipeline", "--stages", "2")
    assert m["settings"]["stages"] == 2 and m["settings"]["replicas"] == 2, m["settings"]
    learned(m)


def test_checkpoint_on_two_nodes_resumed_on_one(tmp_path):
    needs_nodes(2)
    ckdir, killed_out = tmp_path / "ck", tmp_path / "killed"
    cmd = ["python", "-m", "hpcdl.examples.train", "--threads", "1", "--epochs", str(EPOCHS),
           "--out", str(killed_out), "--checkpoint-dir", str(ckdir), "--checkpoint-every", "4"]
    proc = start_on_cluster("2x2", cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:   # SIGKILL the whole job (launcher and ranks) once its first checkpoint exists
        deadline = time.monotonic() + 240
        while not (ckdir / "latest").exists():
            assert proc.poll() is None, "the job ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert not (killed_out / "metrics.json").exists(), "killed too late: the run had finished"
    m = train("1x2", tmp_path / "resumed", "--checkpoint-dir", str(ckdir), "--resume")
    assert m["checkpoint"]["resumed_from_step"] is not None, m["checkpoint"]
    assert "elastic: saved at 4 ranks, now 2" in m["stderr"], m["stderr"][-2000:]
    assert m["ranks"] == 2
    learned(m)
