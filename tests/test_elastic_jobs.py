"""The main job under ``--on-failure shrink`` (``hpcdl launch --ft``): ranks SIGKILLed at
deterministic points (``HPCDL_TEST_KILL``, hpcdl/examples/fault_injection.py) during the
backward pass, during the gradient allreduce and during a checkpoint write; the job
ends 0 on the survivors, as accurate as an uninterrupted run (within 1 point), and
every training sample of every epoch is used exactly once by the committed steps
(``HPCDL_TEST_SAMPLES``). Below ``--min-ranks`` it checkpoints and exits 75.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from hpcdl.checkpoint import CheckpointManager
from hpcdl.examples import train
from helpers.ft_launch import launch_ft
from helpers.sample_ledger import problems

N_TRAIN = 1437   # the digits' training split (hpcdl.examples.common.load_data)
EPOCHS = 10


def _job(n: int, out: Path, extra: list[str], kills: str = "", samples: Path | None = None):
    env = {"HPCDL_TEST_KILL": kills}
    if samples is not None:
        samples.mkdir()
        env["HPCDL_TEST_SAMPLES"] = str(samples)
    res, took = launch_ft(n, ["python", "-m", "hpcdl.examples.train", "--on-failure", "shrink",
                              "--epochs", str(EPOCHS), "--out", str(out), *extra], env)
    return res, took


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.spawns
def test_two_ranks_killed_at_different_steps_4_ranks(tmp_path: Path) -> None:
    """Rank 2 dies in the backward pass of step 7, rank 1 in step 40's allreduce.

    The uninterrupted reference runs in this process: one rank with the 4 ranks' global
    batch (4 x 32) takes the same steps over the same global order (the sampler's
    permutation) with the same averaged gradient, and needs no second job."""
    r = train.main(["--epochs", str(EPOCHS), "--batch-size", "128", "--out",
                    str(tmp_path / "ref")])
    res, took = _job(4, tmp_path / "out", [], "2:7:backward,1:40:allreduce",
                     tmp_path / "samples")
    assert res.returncode == 0, res.stdout + res.stderr
    m = _metrics(tmp_path / "out")
    assert r["failures"] == [] and r["ranks"] == 1
    got = [(f["lost_ranks"], f["ranks_after"]) for f in m["failures"]]
    assert got == [([2], 3), ([1], 2)], m["failures"]
    assert all(f["step"] in (6, 7) for f in m["failures"][:1]), m["failures"]
    assert all(f["recovery_s"] < 2.0 and f["steps_lost"] >= 0 for f in m["failures"])
    assert m["ranks_at_end"] == 2
    assert m["test_accuracy"] >= r["test_accuracy"] - 0.01, (m["test_accuracy"],
                                                             r["test_accuracy"])
    assert problems(tmp_path / "samples", {0, 3}, N_TRAIN, EPOCHS) == []


@pytest.mark.spawns
def test_rank_killed_during_checkpoint_write_3_ranks(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    res, took = _job(3, tmp_path / "out", ["--checkpoint-dir", str(ck), "--checkpoint-every",
                                           "10"], "2:30:checkpoint", tmp_path / "samples")
    assert res.returncode == 0, res.stdout + res.stderr
    m = _metrics(tmp_path / "out")
    assert [(f["lost_ranks"], f["ranks_after"]) for f in m["failures"]] == [([2], 2)]
    assert m["test_accuracy"] > 0.9
    assert problems(tmp_path / "samples", {0, 1}, N_TRAIN, EPOCHS) == []
    # the interrupted save left no half-written folder behind for a resume to pick
    folders = sorted(p.name for p in ck.iterdir() if p.is_dir())
    assert folders and not any(f.endswith(".tmp") for f in folders), folders
    assert CheckpointManager(ck).verify(ck / folders[-1])
    assert m["checkpoint"]["saves"] >= 4


@pytest.mark.spawns
def test_below_min_ranks_checkpoints_and_exits_for_requeue(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    res, _ = _job(3, tmp_path / "out", ["--min-ranks", "3", "--checkpoint-dir", str(ck)],
                  "1:12:allreduce")
    assert res.returncode == 75, res.stdout + res.stderr
    assert "2 rank(s) left, fewer than min_ranks=3" in res.stderr, res.stderr
    assert "exiting with status 75 for a requeue" in res.stderr
    assert (ck / "latest").exists()
    # step 12 was under way when rank 1 died: step 11 is the newest commit, saved; the
    # requeued job resumes there at whatever size it gets (here 2) and finishes
    res2, _ = launch_ft(2, ["python", "-m", "hpcdl.examples.train", "--on-failure", "shrink",
                            "--epochs", "2", "--out", str(tmp_path / "out2"),
                            "--checkpoint-dir", str(ck), "--resume"])
    assert res2.returncode == 0, res2.stdout + res2.stderr
    assert "resumed from" in res2.stderr and "(step 11," in res2.stderr, res2.stderr


@pytest.mark.fake_ranks
@pytest.mark.parametrize("mode", ["pipeline", "ps-sync", "preduce"])
def test_shrink_refused_where_unsupported(mode: str, monkeypatch) -> None:
    monkeypatch.setenv("HPCDL_FT", "1")
    args = train.parse_args(["--mode", mode, "--on-failure", "shrink"])
    if mode in train.SHRINK_MODES:
        pytest.skip(f"--mode {mode} supports --on-failure shrink")
    with pytest.raises(SystemExit, match=f"--mode {mode} cannot go on without a dead rank"):
        train._shrink_mode(args)


@pytest.mark.fake_ranks
def test_shrink_needs_ft_launch(monkeypatch) -> None:
    monkeypatch.delenv("HPCDL_FT", raising=False)
    with pytest.raises(SystemExit, match="hpcdl launch --ft"):
        train._shrink_mode(train.parse_args(["--on-failure", "shrink"]))


def test_default_is_abort() -> None:
    assert train.parse_args([]).on_failure == "abort" and sys.modules["hpcdl.examples.train"]
