"""The main job killed with SIGKILL after its first checkpoint and relaunched with
``--resume``: bit-identical final parameters at the same rank count (2 and 4), and a
resume at another rank count (4 -> 2, 2 -> 3) that trains on to the same accuracy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers.train_jobs import kill_after_first_checkpoint, run_job, train_cmd

EPOCHS = 2
EVERY = 4            # optimizer steps between checkpoints (12-23 steps per epoch here)


def _cmd(n: int, out: Path, *extra: str) -> list[str]:
    return train_cmd(n, out, "--epochs", str(EPOCHS), *extra)


def _run(n: int, out: Path, *extra: str) -> dict:
    return run_job(_cmd(n, out, *extra), out)


def _run_and_kill(n: int, out: Path, ckdir: Path) -> None:
    kill_after_first_checkpoint(_cmd(n, out, "--checkpoint-dir", str(ckdir),
                                     "--checkpoint-every", str(EVERY)), ckdir, out)


@pytest.fixture(scope="module", params=[2, 4])
def killed(request, tmp_path_factory):
    """(rank count, the uninterrupted run's metrics, a copy of the killed run's checkpoints)."""
    n = request.param
    base = tmp_path_factory.mktemp(f"resume{n}")
    reference = _run(n, base / "reference")
    ckdir = base / "ck"
    _run_and_kill(n, base / "killed", ckdir)
    spare = base / "ck-spare"
    shutil.copytree(ckdir, spare)
    return n, reference, ckdir, spare


@pytest.mark.spawns
def test_kill_and_resume_is_bit_identical(killed, tmp_path):
    n, reference, ckdir, _ = killed
    resumed = _run(n, tmp_path, "--checkpoint-dir", str(ckdir), "--checkpoint-every", str(EVERY),
                   "--resume")
    step = resumed["checkpoint"]["resumed_from_step"]
    print(f"{n} ranks: uninterrupted {reference['params_sha256']}\n"
          f"{n} ranks: resumed from step {step} {resumed['params_sha256']}")
    assert step is not None and step >= EVERY and "exact" in resumed["stderr"]
    assert resumed["params_sha256"] == reference["params_sha256"]
    curve = lambda m: [(e["epoch"], e["loss"], e["accuracy"]) for e in m["epochs"]]  # noqa: E731
    assert curve(resumed) == curve(reference)   # the interrupted epoch's loss too
    assert resumed["test_accuracy"] == reference["test_accuracy"]


@pytest.mark.spawns
def test_elastic_resume_on_another_rank_count(killed, tmp_path):
    n, reference, _, spare = killed
    m = {4: 2, 2: 3}[n]
    resumed = _run(m, tmp_path, "--checkpoint-dir", str(spare), "--resume")
    print(f"{n} -> {m} ranks: accuracy {resumed['test_accuracy']:.4f}, uninterrupted at {n}: "
          f"{reference['test_accuracy']:.4f}")
    assert f"elastic: saved at {n} ranks, now {m}" in resumed["stderr"]
    assert resumed["ranks"] == m and len(resumed["epochs"]) == EPOCHS
    assert resumed["test_accuracy"] >= reference["test_accuracy"] - 0.05
