"""``hpcdl launch``: argument parsing, environment, and jobs that must end (not hang).

The ``spawns`` tests start their own ``hpcdl launch`` job, so they run only in
the serial pass.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcdl.cli import main as cli_main
from hpcdl.launch import build_command, find_mpiexec, launch_env, mpi_flavour
from hpcdl.launch import main as launch_main

HPCDL = str(Path(sys.executable).parent / "hpcdl")
PY = sys.executable


def test_build_command_runs_hpcdl_under_mpi4py():
    args, mpiexec, dry = build_command(["-n", "4", "--", "hpcdl", "info"])
    assert args == ["-n", "4", PY, "-m", "mpi4py", "-m", "hpcdl", "info"]
    assert (mpiexec, dry) == (None, False)


def test_build_command_with_mpiexec_options():
    args, _, _ = build_command(["-n", "2", "--", "--bind-to", "none", "--", "python", "x.py", "-v"])
    assert args == ["-n", "2", "--bind-to", "none", PY, "-m", "mpi4py", "x.py", "-v"]


def test_build_command_python_variants():
    assert build_command(["-np", "3", "--", "python", "-m", "mpi4py", "y.py"])[0] == \
        ["-n", "3", PY, "-m", "mpi4py", "y.py"]  # not twice
    assert build_command(["-n", "1", "--", "/opt/py/bin/python3.11", "z.py"])[0] == \
        ["-n", "1", "/opt/py/bin/python3.11", "-m", "mpi4py", "z.py"]
    assert build_command(["-n", "1", "--", "pytest", "-q"])[0] == \
        ["-n", "1", PY, "-m", "mpi4py", "-m", "pytest", "-q"]
    assert build_command(["-n", "2", "--", "./a.out", "--flag"])[0] == ["-n", "2", "./a.out", "--flag"]
    assert build_command(["-n", "2", "--", "python3-config", "--libs"])[0] == \
        ["-n", "2", "python3-config", "--libs"]


def test_build_command_flags():
    args, mpiexec, dry = build_command(["--dry-run", "--mpiexec", "/x/mpirun", "-n", "2", "--", "ls"])
    assert (args, mpiexec, dry) == (["-n", "2", "ls"], "/x/mpirun", True)


@pytest.mark.parametrize("argv", [
    [], ["-n", "4"], ["-n", "4", "--"], ["--", "hpcdl", "info"], ["-n", "0", "--", "ls"],
    ["-n", "x", "--", "ls"], ["-n", "-1", "--", "ls"], ["--bogus", "-n", "2", "--", "ls"],
    ["-n", "2", "--", "--bind-to", "none", "--"], ["-n"], ["-h"],
], ids=lambda a: " ".join(a) or "empty")
def test_bad_usage(argv):
    with pytest.raises(SystemExit) as info:
        build_command(argv)
    assert "usage: hpcdl launch" in str(info.value.code)


def test_launch_env_sets_safe_defaults_and_keeps_the_users():
    env = launch_env("openmpi", 5, {"PATH": "/bin"})
    assert env["PRTE_MCA_rmaps_default_mapping_policy"] == ":oversubscribe"
    assert env["OMPI_MCA_btl"] == "self,sm" and env["PATH"] == "/bin"
    if os.geteuid() == 0:
        assert env["OMPI_ALLOW_RUN_AS_ROOT"] == env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] == "1"
    mine = {"OMPI_MCA_btl": "self,tcp", "PRTE_MCA_rmaps_default_mapping_policy": "core",
            "OMPI_ALLOW_RUN_AS_ROOT": "0"}
    kept = launch_env("openmpi", 5, mine)
    assert all(kept[k] == v for k, v in mine.items())
    old = launch_env("openmpi", 4, {})
    assert old["OMPI_MCA_rmaps_base_oversubscribe"] == "1" and old["OMPI_MCA_btl"] == "self,vader"
    assert launch_env("mpich", 0, {"A": "1"}) == {"A": "1"}


def test_find_mpiexec(monkeypatch):
    assert find_mpiexec("/explicit/mpiexec") == "/explicit/mpiexec"
    monkeypatch.setenv("HPCDL_MPIEXEC", "/from/env/mpiexec")
    assert find_mpiexec() == "/from/env/mpiexec"
    monkeypatch.delenv("HPCDL_MPIEXEC")
    found = find_mpiexec()
    assert os.path.basename(found) in ("mpiexec", "mpirun")
    assert mpi_flavour(found)[0] == "openmpi" and mpi_flavour(found)[1] >= 5
    assert mpi_flavour("/nonexistent/mpiexec") == ("unknown", 0)


def test_dry_run_prints_the_command(capsys):
    assert launch_main(["--dry-run", "-n", "2", "--", "python", "x.py"]) == 0
    words = capsys.readouterr().out.split()
    assert os.path.basename(words[0]) in ("mpiexec", "mpirun") and words[1:3] == ["-n", "2"]
    assert words[3:] == [PY, "-m", "mpi4py", "x.py"]


def test_cli_usage(capsys):
    assert cli_main([]) == 2 and "usage: hpcdl COMMAND" in capsys.readouterr().out
    assert cli_main(["--help"]) == 0
    assert cli_main(["nonsense"]) == 2
    assert "unknown command 'nonsense'" in capsys.readouterr().err


# --- whole jobs ---------------------------------------------------------------------

def _job(tmp_path, body: str, n: int, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``body`` on ``n`` ranks; return the process and the seconds from the failure
    (a rank calling ``failing_now()`` just before it fails) to the job's end, or from the
    launch when nobody failed. Startup (the interpreter, torch) on a loaded 2-core machine
    takes seconds of its own and is no part of how fast a failure ends the job."""
    script = tmp_path / "job.py"
    mark = tmp_path / "failed_at"
    script.write_text("import os, signal, sys, time\nimport numpy as np\nimport hpcdl\n"
                      "def failing_now():\n"
                      f"    open({str(mark)!r}, 'w').write(repr(time.time()))\n"
                      "ctx = hpcdl.init()\n" + body)
    start = time.time()
    proc = subprocess.run([HPCDL, "launch", "-n", str(n), "--", "python", str(script)],
                          capture_output=True, text=True, timeout=timeout)
    end = time.time()
    return proc, end - (float(mark.read_text()) if mark.exists() else start)


@pytest.mark.spawns
def test_info_prints_one_table_for_the_job():
    proc = subprocess.run([HPCDL, "launch", "-n", "4", "--", "hpcdl", "info"],
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    assert out.count("hpcdl 0.1.0") == 1, out
    assert "ranks            4" in out and "Open MPI v5" in out, out
    assert "CUDA-aware MPI   no" in out, out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert sorted(int(r[0]) for r in rows) == [0, 1, 2, 3], out


@pytest.mark.spawns
def test_a_rank_that_raises_ends_the_job(tmp_path):
    """Rank 2 of 4 raises while the others wait in a collective: the job ends
    non-zero within 10 s of the raise and the output names rank 2 and its traceback."""
    proc, elapsed = _job(tmp_path, (
        "if ctx.rank == 2:\n"
        "    failing_now()\n"
        "    raise RuntimeError('rank two failed on purpose')\n"
        "x = np.ones(8)\n"
        "hpcdl.allreduce(x)\n"
        "hpcdl.barrier()\n"), 4)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert elapsed < 10, f"took {elapsed:.1f} s\n{out}"
    assert "rank 2" in out and "rank two failed on purpose" in out, out


@pytest.mark.spawns
def test_an_uncaught_hpcdl_error_names_its_rank(tmp_path):
    proc, elapsed = _job(tmp_path, (
        "if ctx.rank == 1:\n"
        "    failing_now()\n"
        "    hpcdl.allreduce(np.zeros(3, np.complex64))\n"
        "hpcdl.barrier()\n"), 3)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and elapsed < 10, out
    assert "[hpcdl rank 1] allreduce: dtype complex64 is not supported" in out, out


@pytest.mark.spawns
@pytest.mark.parametrize("death", ["os._exit(3)", "os.kill(os.getpid(), signal.SIGKILL)"],
                         ids=["exit", "sigkill"])
def test_a_rank_that_dies_ends_the_job(tmp_path, death):
    """Rank 1 dies without a word while the others wait in a collective."""
    proc, elapsed = _job(tmp_path, (
        "hpcdl.barrier()\n"
        "if ctx.rank == 1:\n"
        "    failing_now()\n"
        f"    {death}\n"
        "x = np.ones(8)\n"
        "hpcdl.allreduce(x)\n"
        "hpcdl.barrier()\n"), 4)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert elapsed < 10, f"took {elapsed:.1f} s\n{proc.stdout}{proc.stderr}"


@pytest.mark.spawns
def test_exit_with_async_ops_nobody_waited_for(tmp_path):
    """At exit every progress thread (the default communicator's and a subgroup's)
    finishes its queue before MPI is finalized; a thread still inside MPI then
    crashed the process (signal 11)."""
    proc, elapsed = _job(tmp_path, (
        "g = hpcdl.subgroup(list(range(ctx.size)))\n"
        "hs = [hpcdl.allreduce(np.ones(1 << 20), comm=g, async_op=True) for _ in range(60)]\n"
        "print('ok', ctx.rank, flush=True)\n"), 4)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and elapsed < 30, out
    assert sorted(proc.stdout.split("\n"))[-4:] == [f"ok {r}" for r in range(4)], out
