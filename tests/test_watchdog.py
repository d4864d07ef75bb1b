"""The watchdog (hpcdl/watchdog/): off by default, a counting view when on, and a stalled
rank named within timeout + 10 s while it makes no MPI call."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import hpcdl
import hpcdl.watchdog
from hpcdl.comm.mpi import MPICommunicator
from hpcdl.errors import InvalidArgumentError
from hpcdl.watchdog import resolve_timeout, watch
from hpcdl.watchdog.comm import WatchedComm, world_ranks
from helpers.job_launch import launch

JOBS = Path(__file__).parent / "jobs" / "watchdog_jobs.py"


def _launch(n: int, kind: str, seconds: float, timeout_env: str | None,
            limit: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    return launch(n, JOBS, kind, seconds, timeout_env, limit)


def test_timeout_parsing(monkeypatch):
    monkeypatch.delenv("HPCDL_TIMEOUT", raising=False)
    assert resolve_timeout(None) == 600.0     # on by default, NCCL's 10 minutes
    monkeypatch.setenv("HPCDL_TIMEOUT", "0")
    assert resolve_timeout(None) == 0.0       # off
    assert resolve_timeout(7) == 7.0
    monkeypatch.setenv("HPCDL_TIMEOUT", "2.5")
    assert resolve_timeout(None) == 2.5
    assert resolve_timeout(0) == 0.0          # the argument wins over the variable
    monkeypatch.setenv("HPCDL_TIMEOUT", "soon")
    with pytest.raises(InvalidArgumentError, match="HPCDL_TIMEOUT='soon'"):
        resolve_timeout(None, rank=3)
    for bad in (-1, float("nan"), "10", True):
        with pytest.raises(InvalidArgumentError, match="seconds >= 0"):
            resolve_timeout(bad)


@pytest.mark.skipif(os.environ.get("HPCDL_TIMEOUT") is not None, reason="HPCDL_TIMEOUT is set")
def test_on_by_default(ctx):
    assert hpcdl.watchdog.active() == 600.0
    assert isinstance(ctx.comm.mpi, WatchedComm) and isinstance(ctx.local_comm.mpi, WatchedComm)
    assert any(t.name == "hpcdl-watchdog" for t in threading.enumerate())


@pytest.mark.spawns
def test_default_and_off_in_a_fresh_job():
    # Unset: on at 600 s. HPCDL_TIMEOUT=0: the code path of before (a plain mpi4py
    # communicator, no thread).
    done, _ = _launch(2, "default", 0, None)
    assert done.returncode == 0 and done.stdout.count("watchdog 600 WatchedComm") == 2, \
        (done.stdout + done.stderr)[-3000:]
    done, _ = _launch(2, "default", 0, "0")
    assert done.returncode == 0 and done.stdout.count("watchdog 0 Intracomm") == 2, \
        (done.stdout + done.stderr)[-3000:]


@pytest.mark.spawns
def test_a_mismatched_collective_is_named():
    # Rank 1 broadcasts while ranks 0 and 2 allreduce: without the watchdog every rank
    # waits for ever (it is on by default; 5 s here to keep the test short).
    done, _ = _launch(3, "mismatch", 0, "5")
    report = done.stdout + done.stderr
    assert done.returncode != 0, report[-3000:]
    # Whichever side reports first names the other: rank 0 or 2 (Allreduce) names rank 1's
    # Bcast, or rank 1 (Bcast) names ranks 0 and 2's Allreduce.
    assert ("MISMATCHED collective: this rank called Allreduce #" in report
            and "rank 1 called Bcast #" in report) or \
        ("MISMATCHED collective: this rank called Bcast #" in report
         and "rank 0 called Allreduce #" in report and "rank 2 called Allreduce #" in report), \
        report[-3000:]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
def test_watched_comm_counts_and_computes(ctx, rng, dtype):
    w = watch(ctx.comm.mpi.Dup())
    try:
        comm = MPICommunicator(w)
        x = (rng.standard_normal(1031) * 100).astype(dtype)
        everyone = ctx.comm.allgather_object(x)
        seq = w.wd_seq
        hpcdl.allreduce(x, comm=comm)                      # the inlined fast path
        # float32 sums in another order differ by a few ulps of the addends (~100 here)
        np.testing.assert_allclose(x, np.sum(everyone, axis=0, dtype=dtype), rtol=1e-5,
                                   atol=1e-3)
        hpcdl.broadcast(x, root=ctx.size - 1, comm=comm)   # the general path
        if ctx.size > 1:  # one rank: nothing to communicate, no MPI call
            assert w.wd_seq >= seq + 2 and w.wd_op == "Bcast"
        sub = w.Split(ctx.rank % 2, ctx.rank)
        assert isinstance(sub, WatchedComm)
        assert world_ranks(sub) == tuple(r for r in range(ctx.size) if r % 2 == ctx.rank % 2)
        sub.Free()
    finally:
        w.Free()


@pytest.mark.spawns
def test_stalled_rank_is_named_within_timeout():
    # Rank 2 of 4 sleeps (no MPI call at all) while the others wait in an allreduce.
    timeout = 5
    done, _ = _launch(4, "collective", 120, str(timeout))
    ended = time.time()
    report = done.stdout + done.stderr
    assert done.returncode != 0, report[-3000:]
    assert "ranks that have not arrived: 2\n" in report, report[-3000:]
    assert "Allreduce #" in report and "rank 2: last started Allreduce" in report
    assert "inside no MPI call" in report and "watchdog_jobs.py" in report
    assert "finished" not in report
    # From the moment rank 2 fell asleep to the end of the whole job.
    slept = float(report.split("sleeping since ")[1].split()[0])
    print(f"job ended {ended - slept:.1f} s after rank 2 fell asleep (timeout {timeout} s)")
    assert ended - slept <= timeout + 10, (ended - slept, report[-2000:])


@pytest.mark.spawns
def test_point_to_point_stall_names_the_sender():
    done, _ = _launch(2, "p2p", 120, "4")
    report = done.stdout + done.stderr
    assert done.returncode != 0, report[-3000:]
    assert "Recv" in report and "ranks that have not arrived: 0\n" in report, report[-3000:]


@pytest.mark.spawns
@pytest.mark.parametrize("timeout_env", [None, "30"])
def test_late_rank_without_timeout_still_finishes(timeout_env):
    # Off: behaviour unchanged (the job waits for the late rank). On with a timeout
    # longer than the wait: no false alarm.
    done, _ = _launch(4, "collective", 3, timeout_env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert done.stdout.count("finished collective") == 4
    assert "watchdog" not in done.stderr


@pytest.mark.spawns
def test_sixteen_ranks_with_large_states_name_the_stall():
    # 16 ranks (oversubscribed), 150 watched communicators each: a state that listed them
    # all outgrew MPI's eager size, and 15 monitors answering each other with a blocking
    # send deadlocked. Nonblocking answers of bounded size: the sleeping rank is named.
    timeout = 10
    done, _ = _launch(16, "many", 300, str(timeout), limit=240)
    ended = time.time()
    report = done.stdout + done.stderr
    assert done.returncode != 0, report[-3000:]
    assert "ranks that have not arrived: 15\n" in report, report[-3000:]
    slept = float(report.split("sleeping since ")[1].split()[0])
    print(f"job ended {ended - slept:.1f} s after rank 15 fell asleep (timeout {timeout} s)")
    # 16 Python ranks on a shared 2-core machine: a wide margin for the answers
    assert ended - slept <= timeout + 30, (ended - slept, report[-2000:])


def test_declared_waits_and_the_wait_for_graph():
    # The registry: the innermost open wait per thread, gone once the block ends.
    from hpcdl.watchdog import report as R
    from hpcdl.watchdog.waits import current_waits, waiting

    me = threading.get_ident()
    with waiting("outer", None, (3,)):
        with waiting("inner", None, [1, 2]) as w:
            assert current_waits()[me] is w and list(w.peers) == [1, 2]
            before = w.since
            time.sleep(0.01)
            w.progress()
            assert w.since > before
        assert current_waits()[me].op == "outer"
    assert me not in current_waits()
    # The walk: 0 waits for 2 (a server), 2 for 1 and 3 (workers); 3 waits for 2 again,
    # 1 waits for nothing (asleep) and 4 never answered: 1 and 4 hold the job up.
    inside = lambda *peers: {"inside": [{"peers": list(peers)}], "comm": None}
    answers = {2: inside(1, 3), 3: inside(2), 1: {"inside": [], "comm": None}, 4: None}
    assert R.next_to_ask({2: answers[2]}, {2}) == [1, 3]
    assert R.stalled_ranks(answers, me=0) == [1, 4]
    stall = R.Stall("Allreduce", "Allreduce #8", [0, 1, 2], [0, 1, 2], 8, True, "here", 6.0)
    seqs = {1: {"comm": {"seq": 8, "op": "Bcast"}, "inside": []},
            2: {"comm": {"seq": 7, "op": "Allreduce"}, "inside": []}}
    assert R.not_arrived(stall, seqs, me=0) == [2]
    assert R.mismatched(stall, seqs) == ["rank 1 called Bcast #8"]
    assert R.comm_key([0, 1, 2]) == R.comm_key((0, 1, 2)) != R.comm_key([0, 2, 1])
