"""The main job's parameter-server modes killed and resumed (serial pass only):

* ps-sync at 3 ranks (2 workers + 1 server) SIGKILLed after its first checkpoint and
  relaunched with --resume ends with bit-identical parameters (params_sha256);
* the same checkpoint resumed at 2 ranks (1 worker) and at 4 ranks with 2 servers (the
  shards re-split; the same 2 workers, so the same hash);
* ps-async: SIGUSR1 to one worker only makes every rank checkpoint at the step
  server 0 picks and exit 0; the resume trains on to a normal accuracy.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers.train_jobs import clean_env, run_job, train_cmd

EPOCHS = 2
EVERY = 4            # pushes between checkpoints (23 per epoch here at 2 workers)


def _cmd(n: int, out: Path, mode: str, *extra: str) -> list[str]:
    return train_cmd(n, out, "--mode", mode, "--epochs", str(EPOCHS), "--ps-timeout", "60",
                     *extra)


def _run(n: int, out: Path, mode: str, *extra: str) -> dict:
    return run_job(_cmd(n, out, mode, *extra), out, timeout=600)


def _start(n: int, out: Path, mode: str, ckdir: Path) -> subprocess.Popen:
    """The job with checkpoints, once its first one exists (so every rank has its
    SIGUSR1 handler and training is under way); its stderr goes to ``out.log``."""
    log = open(out.with_suffix(".log"), "w")   # a file: a full pipe would stall the job
    proc = subprocess.Popen(_cmd(n, out, mode, "--checkpoint-dir", str(ckdir),
                                 "--checkpoint-every", str(EVERY)), env=clean_env(),
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=log)
    log.close()
    deadline = time.monotonic() + 300
    while not (ckdir / "latest").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill_job(proc)
            pytest.fail(f"no checkpoint (exit {proc.returncode}): "
                        f"{out.with_suffix('.log').read_text()[-3000:]}")
        time.sleep(0.05)
    return proc


def _session(session: int) -> list[int]:
    """The processes of the job started as session ``session`` (launcher, mpiexec, ranks:
    the ranks may sit in other process groups, but not in another session)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and os.getsid(int(d.name)) == session:
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


def _kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL every process of the job, no goodbye, and wait until all are gone."""
    deadline = time.monotonic() + 30
    while pids := _session(proc.pid):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            try:
                proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
        assert time.monotonic() < deadline, f"processes {pids} survive SIGKILL"
        time.sleep(0.05)
    proc.wait(timeout=30)


def _rank_pid(session: int, rank: int) -> int:
    """The process of MPI rank ``rank`` in the job started as session ``session``."""
    for pid in _session(session):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"OMPI_COMM_WORLD_RANK={rank}".encode() in env:
            return pid
    raise AssertionError(f"no process of rank {rank} in session {session}")


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """(the uninterrupted ps-sync run's metrics, a fresh copy maker of the killed run's
    checkpoints)."""
    base = tmp_path_factory.mktemp("ps-resume")
    reference = _run(3, base / "reference", "ps-sync")
    ckdir = base / "ck"
    proc = _start(3, base / "killed", "ps-sync", ckdir)
    _kill_job(proc)
    assert not (base / "killed" / "metrics.json").exists(), "killed too late"
    spare = base / "ck-spare"
    shutil.copytree(ckdir, spare)

    def copy(to: Path) -> Path:
        shutil.copytree(spare, to)
        return to

    return reference, copy


@pytest.mark.spawns
def test_ps_sync_kill_and_resume_is_bit_identical(killed, tmp_path):
    reference, copy = killed
    ck = copy(tmp_path / "ck")
    resumed = _run(3, tmp_path / "out", "ps-sync", "--checkpoint-dir", str(ck),
                   "--checkpoint-every", str(EVERY), "--resume")
    step = resumed["checkpoint"]["resumed_from_step"]
    print(f"ps-sync 3 ranks: uninterrupted {reference['params_sha256']}\n"
          f"ps-sync 3 ranks: resumed from step {step} {resumed['params_sha256']}")
    assert step is not None and step >= EVERY and "; exact)" in resumed["stderr"]
    assert resumed["params_sha256"] == reference["params_sha256"]
    curve = lambda m: [(e["epoch"], e["loss"], e["accuracy"]) for e in m["epochs"]]  # noqa: E731
    assert curve(resumed) == curve(reference)   # the interrupted epoch's loss too
    assert resumed["ps"]["server_updates"] == reference["ps"]["server_updates"]


@pytest.mark.spawns
@pytest.mark.parametrize("ranks,servers", [(2, 1), (4, 2)])
def test_ps_sync_elastic_resume(killed, tmp_path, ranks, servers):
    reference, copy = killed
    ck = copy(tmp_path / "ck")
    resumed = _run(ranks, tmp_path / "out", "ps-sync", "--num-servers", str(servers),
                   "--checkpoint-dir", str(ck), "--resume")
    print(f"ps-sync 3 ranks (1 server) -> {ranks} ranks ({servers} servers): accuracy "
          f"{resumed['test_accuracy']:.4f}, uninterrupted {reference['test_accuracy']:.4f}; "
          f"sha256 {resumed['params_sha256'][:16]}, uninterrupted "
          f"{reference['params_sha256'][:16]}")
    assert (f"elastic: saved at 3 ranks with 1 server(s), now {ranks} with {servers}"
            in resumed["stderr"])
    assert resumed["ranks"] == ranks and len(resumed["epochs"]) == EPOCHS
    assert resumed["test_accuracy"] >= reference["test_accuracy"] - 0.05
    if ranks - servers == 2:   # the same workers: the re-split shards change no arithmetic
        assert resumed["params_sha256"] == reference["params_sha256"]


@pytest.mark.spawns
def test_ps_async_sigusr1_to_one_worker_checkpoints_every_rank_and_resumes(tmp_path):
    ckdir = tmp_path / "ck"
    proc = _start(3, tmp_path / "signalled", "ps-async", ckdir)
    os.kill(_rank_pid(proc.pid, 1), signal.SIGUSR1)    # rank 1: a worker, not rank 0
    try:
        proc.wait(timeout=120)
    finally:
        _kill_job(proc)    # whatever is left (nothing, when the job exited)
    err = (tmp_path / "signalled.log").read_text()
    assert proc.returncode == 0, err[-3000:]
    assert "chosen by server 0) on a signal to another rank" in err, err[-3000:]
    assert not (tmp_path / "signalled" / "metrics.json").exists()
    resumed = _run(3, tmp_path / "out", "ps-async", "--checkpoint-dir", str(ckdir), "--resume")
    step = resumed["checkpoint"]["resumed_from_step"]
    print(f"ps-async: SIGUSR1 to rank 1, checkpointed at step {step}; resumed to accuracy "
          f"{resumed['test_accuracy']:.4f}")
    assert step > EVERY and "; exact)" in resumed["stderr"]
    assert len(resumed["epochs"]) == EPOCHS and resumed["test_accuracy"] >= 0.8
