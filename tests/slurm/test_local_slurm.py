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
import signal
import time
from pathlib import Path

import pytest

if not os.environ.get("HPCDL_LOCAL_SLURM_DIR") or "OMPI_COMM_WORLD_SIZE" in os.environ:
    pytest.skip("needs the local Slurm cluster: make slurm-test (jobs/local-slurm/cluster.sh)",
                allow_module_level=True)

from slurm_jobs import VENV, describe, job_env, job_info, output_tail, run, submit, wait_ended

PY = str(VENV / "bin" / "python")
TWO_NODES = os.environ.get("HPCDL_SLURM_UTS") == "1"
need_two_nodes = pytest.mark.skipif(not TWO_NODES, reason="the emulated nodes share a hostname "
                                    "(no UTS namespace): MPI cannot span them")


def rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@need_two_nodes
def test_init_agrees_with_slurm_and_hierarchical_allreduce_across_nodes() -> None:
    p = run(["srun", "-N2", "-n4", "--mpi=pmix", PY, "-m", "mpi4py", "tests/slurm/probe.py"], 180)
    said = f"srun -N2 -n4 probe.py: exit {p.returncode}\n{p.stdout}{p.stderr}"
    assert p.returncode == 0, said
    got = rows(p.stdout)
    assert len(got) == 4, said
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
    assert p.returncode == 0, f"srun --mpi=none: exit {p.returncode}\n{p.stdout}{p.stderr}"
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
    job = submit([f"--nodes={nodes}", f"--ntasks-per-node={per_node}", "--cpus-per-task=1",
                  "--gpus-per-node=0", "--time=10", f"--output={log}", f"jobs/{script}"],
                 job_env(OUT=str(tmp_path / "run")))
    info = wait_ended(job, 420, script)
    report = describe(job, script, info, log)
    assert info["JobState"] == "COMPLETED" and info.get("ExitCode") == "0:0", report
    out = log.read_text(errors="replace")
    ranks = nodes * per_node
    assert re.search(rf"^  ranks +{ranks}$", out, re.M), report
    assert re.search(rf"^  nodes +{nodes} \(", out, re.M), report
    table = re.findall(r"^ +(\d+) +(\d+) +(\d+) +- +\d+ +(\S+)$", out, re.M)
    assert len(table) == ranks and len({row[3] for row in table}) == nodes, (table, report)
    assert f"{ranks} rank(s), mode allreduce" in out, report
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["ranks"] == ranks and len(metrics["epochs"]) == 2, (metrics, report)


# -- the requeue job --------------------------------------------------------------------
# The signal must reach the ranks while they train. Racing a poll against a 1-second
# epoch was flaky both ways: on an idle machine the job had finished (scancel failed, or
# USR1 hit a rank in interpreter shutdown and killed it), so the test either failed or
# passed without a checkpoint on the signal. Instead the ranks are frozen (SIGSTOP, by
# PID: they run on this host) once each catches USR1, the signal is sent and seen
# pending on every rank, and only then are they let go: the handler runs in training.

def _proc_status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # the process has exited
        return {}
    return dict(ln.split(":\t", 1) for ln in text.splitlines() if ":\t" in ln)


def _has(mask: str, sig: int) -> bool:
    return bool(int(mask or "0", 16) >> (sig - 1) & 1)


def _rank_pids(marker: str) -> list[int]:
    """The ranks of the training step: python processes whose command line names
    ``marker`` (the run's own folder; srun and the batch shell are not python)."""
    pids = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmd.read_bytes().split(b"\0")
        except OSError:
            continue
        if (Path(argv[0].decode(errors="replace")).name.startswith("python")
                and b"hpcdl.examples.train" in argv and marker.encode() in b" ".join(argv)):
            pids.append(int(cmd.parent.name))
    return sorted(pids)


def _freeze_catching(marker: str, ranks: int, timeout: float, log: Path) -> list[int]:
    """SIGSTOP the ``ranks`` training processes once every one catches SIGUSR1."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = _rank_pids(marker)
        if len(pids) == ranks and all(_has(_proc_status(p).get("SigCgt", ""), signal.SIGUSR1)
                                      for p in pids):
            for p in pids:
                os.kill(p, signal.SIGSTOP)
            # Stopped now: check again (a rank could have exited in between).
            if all(_has(_proc_status(p).get("SigCgt", ""), signal.SIGUSR1) for p in pids):
                return pids
            _thaw(pids)
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {ranks} training "
                         f"ranks that catch SIGUSR1 (found {_rank_pids(marker)})\n"
                         f"{output_tail(log)}")


def _thaw(pids: list[int]) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGCONT)
        except ProcessLookupError:
            pass


def _usr1_pending(pid: int) -> bool:
    st = _proc_status(pid)
    return _has(st.get("SigPnd", ""), signal.SIGUSR1) or _has(st.get("ShdPnd", ""),
                                                              signal.SIGUSR1)


def _wait_for(what: str, check, timeout: float, job: str, log: Path) -> None:
    """Poll ``check()`` every 0.2 s; fail naming ``what`` and the job after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n"
                                 + describe(job, "slurm_requeue.sbatch", job_info(job), log))
        time.sleep(0.2)


def test_requeue_job_checkpoints_on_usr1_and_resumes(tmp_path: Path) -> None:
    # What SLURM does 60 s before the time limit (--signal=B:USR1@60), sent by hand so the
    # test does not wait for a limit: USR1 to the batch shell, which passes it to the
    # ranks; they checkpoint and exit, the script requeues the job, and run 2 resumes.
    log, out = tmp_path / "job.out", tmp_path / "run"
    job = submit(["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0",
                  "--time=10", f"--output={log}", "jobs/slurm_requeue.sbatch"],
                 job_env(OUT=str(out), EPOCHS="1", CKPT_EVERY="5", NTASKS="2", DEVICE="cpu"))
    start = time.monotonic()
    pids: list[int] = []
    try:
        pids = _freeze_catching(str(out), 2, 300, log)
        print(f"ranks {pids} catch USR1 after {time.monotonic() - start:.0f} s: stopped them; "
              "sending USR1 to the batch shell")
        sig = run(["scancel", "--batch", "--signal=USR1", job], 30)
        assert sig.returncode == 0, sig.stdout + sig.stderr
        _wait_for("USR1 pending on every rank (batch shell -> srun -> tasks)",
                  lambda: all(_usr1_pending(p) for p in pids), 60, job, log)
        _thaw(pids)
        _wait_for("the requeue", lambda: int(job_info(job).get("Restarts", 0)) >= 1, 300,
                  job, log)
        print(f"requeued after {time.monotonic() - start:.0f} s")
        # Slurm holds a requeued job for cred_expire (default 120 s; the local cluster sets
        # 10 s). Forcing an earlier start gets it killed: "Job credential revoked".
        info = wait_ended(job, 400, "slurm_requeue.sbatch run 2")
        print(f"finished after {time.monotonic() - start:.0f} s")
    finally:
        _thaw(pids)                  # whatever happened: no frozen rank,
        run(["scancel", job], 30)    # no job left behind
    report = describe(job, "slurm_requeue.sbatch", info, log)
    text = log.read_text(errors="replace")
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", report
    assert "USR1: asking the ranks to checkpoint" in text, report
    # The ranks acted on the signal mid-training (not after the loop, not killed by it).
    assert re.search(r"checkpointed at step \d+ on SIGUSR1", text), report
    assert f"requeueing job {job}" in text and f"run 2 of job {job}" in text, report
    assert re.search(r"resumed from .*step-\d+ \(step [1-9]\d*", text), report
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ranks"] == 2 and len(metrics["epochs"]) == 1, (metrics, report)
    assert metrics["checkpoint"]["resumed_from_step"] > 0, (metrics, report)
