"""``hpcdl.init(comm)`` and ``hvd.init(comm=...)`` get the job's safety nets too.

Jobs under a bare ``mpiexec`` (not ``hpcdl launch``, whose ``python -m mpi4py``
aborts on an uncaught exception by itself), each over a Dup of ``COMM_WORLD``
handed to ``init`` (tests/jobs/init_comm_job.py):

* a rank that raises ends the job within seconds, the output naming that rank and
  the exception (without the abort hook the others waited forever: the raising
  rank sat in ``MPI_Finalize``, the others in their allreduce);
* with ``HPCDL_TIMEOUT`` a stalled rank is named by the watchdog within timeout + 10 s;
* asynchronous allreduces nobody waited for are finished at exit.

Serial pass only (each starts its own job); every job is bounded by a timeout and
its process group killed whatever happens.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcdl.launch import launch_env, mpi_flavour

JOB = Path(__file__).parent / "jobs" / "init_comm_job.py"
BIN = Path(sys.executable).parent


def bare_mpiexec(n: int, args: list[str], timeout: float, **extra: str) -> tuple[int, str, float]:
    """(exit status, stdout + stderr, when it ended) of ``mpiexec -n n python JOB args``;
    the job's process group is killed if it outlives ``timeout`` (status then None)."""
    mpiexec = str(BIN / "mpiexec")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PRTE_"))}
    env = launch_env(*mpi_flavour(mpiexec), {**env, **extra, "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen([mpiexec, "-n", str(n), sys.executable, str(JOB), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out, time.time()
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # mpiexec takes its ranks down with it
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        return None, out, time.time()


def stamp(out: str, word: str) -> float:
    found = re.search(rf"{word} at (\d+\.\d+)", out)
    assert found, out[-3000:]
    return float(found.group(1))


@pytest.mark.spawns
@pytest.mark.parametrize("api,n", [("hpcdl", 3), ("horovod", 2)])
def test_a_rank_that_raises_after_init_comm_ends_the_job(api, n):
    status, out, ended = bare_mpiexec(n, [api, "raise"], timeout=150)
    assert status is not None, f"the job hung (killed after 150 s):\n{out[-3000:]}"
    assert status != 0, out[-3000:]
    assert f"[hpcdl rank 1/{n}] uncaught exception" in out, out[-3000:]
    assert "rank one failed on purpose after init(comm)" in out, out[-3000:]
    assert ended - stamp(out, "raising") < 30, out[-3000:]  # seconds, on a loaded machine


@pytest.mark.spawns
def test_the_watchdog_watches_a_context_made_by_init_comm():
    timeout = 5
    status, out, ended = bare_mpiexec(3, ["hpcdl", "stall"], timeout=150,
                                      HPCDL_TIMEOUT=str(timeout))
    assert status is not None, f"the job hung (killed after 150 s):\n{out[-3000:]}"
    assert status != 0 and "finished rank" not in out, out[-3000:]
    assert "watchdog: Allreduce" in out and "ranks that have not arrived: 1\n" in out, out
    assert ended - stamp(out, "stalling") <= timeout + 10, out[-3000:]


@pytest.mark.spawns
def test_async_ops_nobody_waited_for_are_finished_at_exit():
    status, out, _ = bare_mpiexec(2, ["horovod", "async_exit"], timeout=150)
    assert status == 0, out[-3000:]
    assert sorted(re.findall(r"finished rank \d", out)) == ["finished rank 0", "finished rank 1"]
