"""Submitting, waiting for and describing jobs on the local Slurm (tests/slurm only).

Every Slurm command runs under ``timeout`` and every wait has a deadline: a hung step
must fail its test, naming the job, not hang CI. A failed job is described in full
(script, job id, Slurm's state, exit code and reason, the daemons' log lines about it,
the tail of its output), so the failure says which job failed and how.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent      # the venv running pytest runs the jobs too
CLUSTER = Path(os.environ.get("HPCDL_LOCAL_SLURM_DIR", "/nonexistent"))
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
         "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def run(cmd: list[str], timeout: int, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """One Slurm command under ``timeout`` (KILL 10 s after TERM)."""
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


def submit(args: list[str], env: dict[str, str]) -> str:
    """``sbatch --parsable ARGS``; the job id (AssertionError with sbatch's answer)."""
    p = run(["sbatch", "--parsable", *args], 60, env=env)
    assert p.returncode == 0 and p.stdout.strip(), \
        f"sbatch {' '.join(args)}: exit {p.returncode}\n{p.stdout}{p.stderr}"
    return p.stdout.strip().split(";")[0]


def job_info(job: str) -> dict[str, str]:
    """``scontrol show job`` as a dict (JobState, ExitCode, Reason, Restarts, ...);
    ``{"JobState": "GONE"}`` once Slurm forgot the job (MinJobAge, cluster.sh)."""
    p = run(["scontrol", "show", "-o", "job", job], 30)
    if p.returncode != 0 or "JobState=" not in p.stdout:
        return {"JobState": "GONE"}
    # key=value pairs; a value may hold spaces only in fields we do not read
    return dict(re.findall(r"(\w+)=(\S*)", p.stdout))


def wait_ended(job: str, timeout: float, what: str = "") -> dict[str, str]:
    """Poll the job every second until it ended (or Slurm forgot it) and return its
    info; after ``timeout`` cancel it and raise naming the job and its state."""
    deadline = time.monotonic() + timeout
    while True:
        info = job_info(job)
        if info["JobState"] in ENDED | {"GONE"}:
            return info
        if time.monotonic() > deadline:
            run(["scancel", job], 30)
            raise AssertionError(f"job {job} {what}: still {info['JobState']} after "
                                 f"{timeout:.0f} s (cancelled)")
        time.sleep(1)


def output_tail(log: Path, lines: int = 60) -> str:
    """The last lines of a job's output, progress bars (carriage returns) removed."""
    if not log.exists():
        return f"(no job output: {log} does not exist)"
    text = log.read_text(errors="replace")
    kept = [ln.rsplit("\r", 1)[-1] for ln in text.splitlines()]
    kept = [ln for ln in kept if ln.strip()]
    return "\n".join(kept[-lines:])


def daemon_lines(job: str) -> str:
    """What slurmctld and the slurmd's logged about this job and its steps."""
    pattern = re.compile(rf"(JobId={job}\b|\[{job}\.|job {job}\b|StepId={job}\.)")
    found = []
    for f in sorted(CLUSTER.glob("*.log")):
        for ln in f.read_text(errors="replace").splitlines():
            if pattern.search(ln):
                found.append(f"{f.name}: {ln}")
    return "\n".join(found[-40:]) or "(no daemon log lines)"


# Open MPI's report of a crashed rank (signal, address, C backtrace) and srun's summary:
# shown on their own, as they may be far from the end of a long output.
CRASH = re.compile(r"\*\*\* Process received signal|Signal( code)?: |Failing at address|"
                   r"^\[[^\]]+\] \[ ?\d+\] |Fatal Python error|srun: error: .*task")


def crash_lines(log: Path) -> str:
    if not log.exists():
        return ""
    found = [ln for ln in output_tail(log, 10**6).splitlines() if CRASH.search(ln)]
    return "\n".join(found[:60])


def describe(job: str, script: str, info: dict[str, str], log: Path) -> str:
    """The failure report of one job: which, its Slurm state, the daemons' view, output."""
    state = " ".join(f"{k}={info.get(k, '?')}" for k in ("JobState", "ExitCode", "Reason",
                                                          "Restarts", "NodeList"))
    crashes = crash_lines(log)
    return (f"job {job} ({script}): {state}\n--- daemon logs about job {job}\n"
            f"{daemon_lines(job)}\n"
            + (f"--- crash reports in {log}\n{crashes}\n" if crashes else "")
            + f"--- tail of {log}\n{output_tail(log)}")
