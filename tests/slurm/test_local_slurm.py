"""The job scripts and hpcdl's launcher handling under a real (local) Slurm cluster.

Runs only inside ``jobs/local-slurm/cluster.sh`` (``make slurm-test``), which starts
munged, slurmctld and two emulated nodes and exports ``HPCDL_LOCAL_SLURM_DIR`` and
``SLURM_CONF``; elsewhere (``pytest tests``, the mpiexec passes) the module skips.
Every Slurm command runs under ``timeout``; the cluster script stops the daemons.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

if not os.environ.get("HPCDL_LOCAL_SLURM_DIR") or "OMPI_COMM_WORLD_SIZE" in os.environ:
    pytest.skip("needs the local Slurm cluster: make slurm-test (jobs/local-slurm/cluster.sh)",
                allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent      # the venv running pytest runs the jobs too
PY = str(VENV / "bin" / "python")
TWO_NODES = os.environ.get("HPCDL_SLURM_UTS") == "1"
need_two_nodes = pytest.mark.skipif(not TWO_NODES, reason="the emulated nodes share a hostname "
                                    "(no UTS namespace): MPI cannot span them")


def run(cmd: list[str], timeout: int, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """One Slurm command under ``timeout`` (a hung step must fail the test, not CI)."""
    return subprocess.run(["timeout", "-k", "10", str(timeout), *cmd], cwd=ROOT, env=env,
                          capture_output=True, text=True, errors="replace")


def job_env(**extra: str) -> dict[str, str]:
    """The submitter's environment for sbatch (exported into the job): the venv, CPU
    training, 2 epochs; root may run Open MPI's mpirun here (CI runs as root)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMPI_", "PMIX_", "PRTE_", "SLURM_")) or k == "SLURM_CONF"}
    env.update({"VENV": str(VENV), "TRAIN_ARGS": "--device cpu", "EPOCHS": "2",
                "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", **extra})
    return env


def rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@need_two_nodes
def test_init_agrees_with_slurm_and_hierarchical_allreduce_across_nodes() -> None:
    p = run(["srun", "-N2", "-n4", "--mpi=pmix", PY, "-m", "mpi4py", "tests/slurm/probe.py"], 180)
    assert p.returncode == 0, p.stdout + p.stderr
    got = rows(p.stdout)
    assert len(got) == 4, p.stdout + p.stderr
    for r in got:
        s = r["slurm"]
        assert (r["rank"], r["local_rank"], r["node"], r["num_nodes"], r["size"]) == (
            int(s["SLURM_PROCID"]), int(s["SLURM_LOCALID"]), int(s["SLURM_NODEID"]),
            int(s["SLURM_NNODES"]), int(s["SLURM_NTASKS"])), r
        assert r["allreduce_errors"] == [], r
    assert {r["host"] for r in got} == {"n1", "n2"}
    assert sorted(r["num_nodes"] for r in got) == [2] * 4


def test_srun_without_pmi_warns_on_every_task() -> None:
    code = "import hpcdl; c = hpcdl.init(); print('size', c.size, flush=True)"
    p = run(["srun", "-N1", "-n2", "--mpi=none", PY, "-c", code], 120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.split().count("size") == 2 and "size 1" in p.stdout, p.stdout
    warning = "the launcher started 2 tasks but MPI sees a job of 1 rank"
    assert p.stderr.count(warning) == 2, p.stderr
    assert "--mpi=pmix" in p.stderr


# One entry per job script: (script, nodes, tasks per node). The requeue job has its own
# test below (it is signalled mid-run and must come back).
JOBS = [("slurm_single_node.sbatch", 1, 2),
        ("slurm_multi_node.sbatch", 2, 2),
        ("slurm_mpirun.sbatch", 2, 2)]


@pytest.mark.parametrize("script,nodes,per_node", JOBS, ids=[j[0].split(".")[0] for j in JOBS])
def test_job_script_under_sbatch(script: str, nodes: int, per_node: int, tmp_path: Path) -> None:
    if nodes > 1 and not TWO_NODES:
        pytest.skip("the emulated nodes share a hostname: MPI cannot span them")
    log = tmp_path / "job.out"
    # The #SBATCH lines ask for a GPU cluster's resources; the command line overrides them.
    p = run(["sbatch", "--wait", f"--nodes={nodes}", f"--ntasks-per-node={per_node}",
             "--cpus-per-task=1", "--gpus-per-node=0", "--time=10", f"--output={log}",
             f"jobs/{script}"], 420, env=job_env(OUT=str(tmp_path / "run")))
    # errors="replace": the ranks' progress bars interleave mid-character in one file.
    out = log.read_text(errors="replace") if log.exists() else "(no job output)"
    print(out)
    assert p.returncode == 0, f"sbatch exit {p.returncode}\n{p.stdout}{p.stderr}\n{out}"
    ranks = nodes * per_node
    assert re.search(rf"^  ranks +{ranks}$", out, re.M), out
    assert re.search(rf"^  nodes +{nodes} \(", out, re.M), out
    table = re.findall(r"^ +(\d+) +(\d+) +(\d+) +- +\d+ +(\S+)$", out, re.M)
    assert len(table) == ranks and len({row[3] for row in table}) == nodes, table
    assert f"{ranks} rank(s), mode allreduce" in out, out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["ranks"] == ranks and len(metrics["epochs"]) == 2, metrics


def _job_state(job: str) -> tuple[str, int]:
    """(JobState, Restarts) from ``scontrol show job``; ("GONE", 0) once Slurm forgot it."""
    p = run(["scontrol", "show", "job", job], 30)
    state = re.search(r"JobState=(\S+)", p.stdout)
    restarts = re.search(r"Restarts=(\d+)", p.stdout)
    return (state.group(1) if state else "GONE", int(restarts.group(1)) if restarts else 0)


def _ended(job: str) -> bool:
    """Run 2 completed, Slurm forgot the job, or it ended badly (one scontrol call)."""
    state, restarts = _job_state(job)
    return (state, restarts) in {("COMPLETED", 1), ("GONE", 0)} or \
        state in {"FAILED", "CANCELLED", "TIMEOUT"}


def _wait_for(what: str, check, timeout: float, log: Path) -> None:
    """Poll ``check()`` every second until true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            out = log.read_text(errors="replace") if log.exists() else "(no job output)"
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{out[-4000:]}")
        time.sleep(1)


def test_requeue_job_checkpoints_on_usr1_and_resumes(tmp_path: Path) -> None:
    # What SLURM does 60 s before the time limit (--signal=B:USR1@60), sent by hand so the
    # test does not wait for a limit: USR1 to the batch shell, which passes it to the
    # ranks; they checkpoint and exit, the script requeues the job, and run 2 resumes.
    log, out = tmp_path / "job.out", tmp_path / "run"
    p = run(["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
             "--gpus-per-node=0", "--time=10", f"--output={log}", "jobs/slurm_requeue.sbatch"],
            60, env=job_env(OUT=str(out), EPOCHS="1", CKPT_EVERY="5", NTASKS="2",
                            DEVICE="cpu"))
    assert p.returncode == 0, p.stdout + p.stderr
    job = p.stdout.strip().split(";")[0]
    start = time.monotonic()
    try:
        # Signal once the first checkpoint is complete ("latest" moves last).
        _wait_for("the first checkpoint", lambda: (out / "ckpt" / "latest").exists(), 300, log)
        print(f"first checkpoint after {time.monotonic() - start:.0f} s; sending USR1")
        sig = run(["scancel", "--batch", "--signal=USR1", job], 30)
        assert sig.returncode == 0, sig.stdout + sig.stderr
        _wait_for("the requeue", lambda: _job_state(job)[1] >= 1, 300, log)
        print(f"requeued after {time.monotonic() - start:.0f} s")
        # Slurm holds a requeued job for cred_expire (default 120 s; the local cluster sets
        # 10 s). Forcing an earlier start gets it killed: "Job credential revoked".
        _wait_for("the requeued run to finish", lambda: _ended(job), 400, log)
        print(f"finished after {time.monotonic() - start:.0f} s")
    finally:
        run(["scancel", job], 30)    # whatever happened: no job left behind
    text = log.read_text(errors="replace")
    print(text)
    final = _job_state(job)
    assert final[0] in {"COMPLETED", "GONE"}, (final, text[-4000:])
    assert "USR1: asking the ranks to checkpoint" in text, text[-4000:]
    assert f"requeueing job {job}" in text and f"run 2 of job {job}" in text, text[-4000:]
    assert re.search(r"resumed from .*step-\d+ \(step [1-9]\d*", text), text[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ranks"] == 2 and len(metrics["epochs"]) == 1, metrics
    assert metrics["checkpoint"]["resumed_from_step"] > 0, metrics
