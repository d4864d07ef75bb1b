"""Test-only hooks of the main job's ``--on-failure shrink`` loop (tests/test_elastic_jobs.py).

``HPCDL_TEST_KILL="RANK:STEP:PHASE[,...]"``: world rank RANK SIGKILLs itself at
optimizer step STEP (counted over the run, from 1) in PHASE: ``backward`` (from a
gradient hook, while the first buckets' allreduces are already in flight),
``allreduce`` (after the backward pass, while its buckets' allreduces run) or
``checkpoint`` (while the checkpoint save after that step is under way).
Deterministic kill points instead of timing.

``HPCDL_TEST_SAMPLES=DIR``: every rank appends ``gen epoch step id,id,...`` for
each step it starts to ``DIR/samples-<world rank>.txt`` and ``gen epoch step`` for
each step it commits to ``DIR/commits-<world rank>.txt`` (``gen epoch step time``;
``gen``: recoveries so far), so a test can count every sample of every epoch among
the committed steps; a killed rank writes the time of its death to ``kill-<rank>.txt``.
The plain ``--mode allreduce`` loop calls the ``allreduce`` kill point and
:func:`record_commit` too (benchmarks/failover.py's checkpoint-and-restart baseline).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from mpi4py import MPI

__all__ = ["kill_point", "watch_checkpoint", "record_samples", "record_commit"]


def _plan() -> set[tuple[int, int, str]]:
    out = set()
    for item in filter(None, os.environ.get("HPCDL_TEST_KILL", "").split(",")):
        rank, step, phase = item.split(":")
        out.add((int(rank), int(step), phase))
    return out


_PLAN = _plan()
_WORLD = MPI.COMM_WORLD.Get_rank()


def _die() -> None:
    _append("kill", f"{time.time():.6f}")   # when, for benchmarks/failover.py
    os.kill(os.getpid(), signal.SIGKILL)


def kill_point(step: int, phase: str, model: Any = None) -> None:
    """Die here if the plan says so; ``backward`` arms a hook on the first layer's weight
    (the last gradient of the backward pass: the other buckets are already reducing)."""
    if (_WORLD, step, phase) not in _PLAN:
        return
    if phase == "backward":
        first = next(iter(model.parameters()))
        first.register_hook(lambda grad: _die())
    else:
        _die()


def watch_checkpoint(step: int, directory: str | None) -> None:
    """With a ``checkpoint`` kill at ``step``: die as soon as the save's temporary folder
    exists (the save has begun on rank 0 and not finished)."""
    if (_WORLD, step, "checkpoint") not in _PLAN or not directory:
        return

    def watch() -> None:
        while True:
            if any(Path(directory).glob("*.tmp")):
                _die()
            time.sleep(0.0005)

    threading.Thread(target=watch, daemon=True).start()


def _append(kind: str, line: str) -> None:
    folder = os.environ.get("HPCDL_TEST_SAMPLES")
    if folder:
        with open(Path(folder) / f"{kind}-{_WORLD}.txt", "a") as f:
            f.write(line + "\n")


def record_samples(gen: int, epoch: int, step: int, ids: list[int]) -> None:
    _append("samples", f"{gen} {epoch} {step} {','.join(map(str, ids))}")


def record_commit(gen: int, epoch: int, step: int) -> None:
    _append("commits", f"{gen} {epoch} {step} {time.time():.6f}")
