"""The main job's parameter-server and P-Reduce modes survive a dead rank (issue 26).

Every job runs under real ``mpiexec --with-ft ulfm`` with ``HPCDL_FT=1``; a rank
SIGKILLs itself at a known step (``HPCDL_TEST_SIGKILL``, hpcdl/examples/modes/
failpoint.py). With ``--on-failure shrink`` the job must finish with exit 0, record the
loss in ``metrics.json`` ``failures``, and reach the accuracy of the same run without
the kill (within ``ACCURACY_POINTS``); a dead server, a dead rank without
``--on-failure shrink``, and a dead P-Reduce controller end the job naming the rank.
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

from helpers.job_launch import run_bounded

pytestmark = pytest.mark.spawns

ACCURACY_POINTS = 5.0   # the survivors' final accuracy vs the uninterrupted run's
LIMIT_S = 240           # any job: a hang is killed (launcher and ranks) after this


def _env(kill: str | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HPCDL_FT": "1",
           "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe",
           "OMPI_MCA_rmaps_base_oversubscribe": "1", "OMPI_MCA_btl": "self,sm"}
    for k in [k for k in env if k.startswith(("OMPI_COMM_", "PMIX_", "PRTE_ESS"))]:
        env.pop(k)  # a clean launch even when pytest itself runs under mpiexec
    env.pop("HPCDL_TIMEOUT", None)
    env.pop("HPCDL_TEST_SIGKILL", None)
    if kill:
        env["HPCDL_TEST_SIGKILL"] = kill
    return env


def run_ft(n: int, out: Path, mode_args: list[str], kill: str | None = None,
           shrink: bool = True) -> tuple[subprocess.CompletedProcess, float]:
    """The main job on n ranks under ULFM; returns the finished process and its wall time."""
    mpiexec = Path(sys.executable).parent / "mpiexec"
    env = _env(kill)
    cmd = [str(mpiexec), "--with-ft", "ulfm", "-n", str(n),
           *[a for k in ("HPCDL_FT", "HPCDL_TEST_SIGKILL", "HPCDL_TUNE", "HPCDL_CACHE_DIR",
                         "PYTHONUNBUFFERED") if k in env for a in ("-x", k)],
           sys.executable, "-m", "hpcdl.examples.train", "--threads", "1", "--out", str(out),
           "--epochs", "3", *mode_args, *(["--on-failure", "shrink"] if shrink else [])]
    return run_bounded(cmd, env, LIMIT_S)


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def killed_at(stderr: str) -> float:
    """The wall time the failpoint printed just before its SIGKILL."""
    # (rank 0's progress bar may share the line: no newline before it)
    found = re.search(r"failpoint: rank \d+ SIGKILLs itself .*? at (\d+\.\d+)", stderr)
    assert found, stderr[-3000:]
    return float(found.group(1))


def survived(tmp_path: Path, n: int, mode_args: list[str], kill: str) -> tuple[dict, dict, str]:
    """The same job uninterrupted and with ``kill``: both metrics, the killed run's stderr."""
    base, _ = run_ft(n, tmp_path / "base", mode_args)
    assert base.returncode == 0, base.stderr[-3000:]
    hurt, _ = run_ft(n, tmp_path / "hurt", mode_args, kill=kill)
    assert hurt.returncode == 0, hurt.stderr[-3000:]
    a, b = metrics(tmp_path / "base"), metrics(tmp_path / "hurt")
    assert a["failures"] == []
    print(f"{mode_args}: accuracy uninterrupted {100 * a['test_accuracy']:.2f}%, "
          f"with rank {kill} killed {100 * b['test_accuracy']:.2f}%; failures {b['failures']}")
    assert abs(a["test_accuracy"] - b["test_accuracy"]) * 100 <= ACCURACY_POINTS, (a, b)
    return a, b, hurt.stderr


@pytest.mark.parametrize("mode,n,kill", [("ps-sync", 4, "1:20"), ("ps-async", 3, "1:10")])
def test_ps_worker_dies_and_training_finishes(tmp_path: Path, mode: str, n: int,
                                              kill: str) -> None:
    _, m, stderr = survived(tmp_path, n, ["--mode", mode], kill)
    rank, step = (int(v) for v in kill.split(":"))
    (f,) = m["failures"]
    assert f["lost_ranks"] == [rank] and f["step"] == step and f["ranks_after"] == n - 1
    assert f["steps_lost"] == 0 and 0 <= f["recovery_s"] < 10
    # the server and every surviving worker agree on who is gone
    assert m["ps"]["lost_by_rank"] == {str(r): [rank] for r in range(n) if r != rank}
    lost = m["ps"]["lost_workers"][0]
    detect, resume = lost["detected"] - killed_at(stderr), lost["resumed"] - killed_at(stderr)
    print(f"{mode}: SIGKILL -> server noticed {detect:.3f} s, -> next update {resume:.3f} s")
    assert 0 <= detect < 10 and detect <= resume < 20


def test_ps_dead_server_ends_the_job_naming_it(tmp_path: Path) -> None:
    proc, wall = run_ft(3, tmp_path / "o", ["--mode", "ps-sync"], kill="2:30")
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "server rank(s) [2] died" in proc.stderr and "not replicated" in proc.stderr, \
        proc.stderr[-3000:]
    ended = time.time() - killed_at(proc.stderr)
    print(f"dead server: the job ended {ended:.1f} s after the SIGKILL ({wall:.1f} s in all)")
    assert ended < 60 and not (tmp_path / "o" / "metrics.json").exists()


def test_ps_dead_worker_without_shrink_ends_the_job_naming_it(tmp_path: Path) -> None:
    proc, _ = run_ft(3, tmp_path / "o", ["--mode", "ps-sync"], kill="1:5", shrink=False)
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "worker rank(s) [1] died" in proc.stderr, proc.stderr[-3000:]
    assert "--on-failure shrink" in proc.stderr


def test_preduce_rank_dies_and_training_finishes(tmp_path: Path) -> None:
    _, m, stderr = survived(tmp_path, 4, ["--mode", "preduce", "--group-size", "2"], "2:15")
    (f,) = m["failures"]
    assert f["lost_ranks"] == [2] and f["ranks_after"] == 3 and f["steps_lost"] == 0
    assert f["step"] > 0 and 0 <= f["recovery_s"] < 10
    assert m["preduce"]["lost_ranks"] == [2]   # the epoch-end communicator shrank too
    lost = m["preduce"]["lost"][0]
    detect, resume = lost["detected"] - killed_at(stderr), lost["resumed"] - killed_at(stderr)
    print(f"preduce: SIGKILL -> controller noticed {detect:.3f} s, -> survivors' full sync "
          f"{resume:.3f} s")
    assert 0 <= detect < 10 and detect <= resume < 20
    assert len(m["epochs"]) == 3


def test_preduce_dead_controller_ends_the_job_naming_it(tmp_path: Path) -> None:
    proc, wall = run_ft(3, tmp_path / "o", ["--mode", "preduce"], kill="0:5")
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "rank 0 died: it ran the P-Reduce controller" in proc.stderr, proc.stderr[-3000:]
    ended = time.time() - killed_at(proc.stderr)
    print(f"dead controller: the job ended {ended:.1f} s after the SIGKILL ({wall:.1f} s)")
    assert ended < 60


def test_preduce_dead_rank_without_shrink_ends_the_job_naming_it(tmp_path: Path) -> None:
    proc, _ = run_ft(3, tmp_path / "o", ["--mode", "preduce"], kill="1:5", shrink=False)
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "rank(s) [1] died" in proc.stderr and "--on-failure shrink" in proc.stderr, \
        proc.stderr[-3000:]
