"""The main job's checkpoint flags, shared by every mode that wants them.

    --checkpoint-dir DIR --checkpoint-every N [--checkpoint-keep K] [--resume]

``N`` counts optimizer steps. With ``--checkpoint-dir`` the job also saves and
exits on SIGUSR1 (SLURM's ``--signal=B:USR1@60``: jobs/slurm_requeue.sbatch).
``--resume`` continues from the newest good checkpoint in DIR, or starts fresh
when there is none (so a requeued job can always pass it).
"""

from __future__ import annotations

import argparse
from typing import Any

from hpcdl.checkpoint import TrainingCheckpoint, params_sha256

__all__ = ["add_arguments", "make", "fields"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("checkpointing (docs/fault-tolerance.md)")
    g.add_argument("--checkpoint-dir", default=None, help="save checkpoints into this folder")
    g.add_argument("--checkpoint-every", type=int, default=0,
                   help="save every N optimizer steps (0: only on SIGUSR1)")
    g.add_argument("--checkpoint-keep", type=int, default=2, help="keep the newest K")
    g.add_argument("--resume", action="store_true",
                   help="continue from the newest good checkpoint in --checkpoint-dir")


def make(args: argparse.Namespace, cls: Any = TrainingCheckpoint, **kwargs: Any) -> Any:
    """``cls(dir, every, resume=, keep=, seed=, **kwargs)`` from the flags, after refusing
    bad ones: TrainingCheckpoint by default, or a mode's own (PSCheckpoint,
    PReduceCheckpoint, PipelineCheckpoint); a pass-through without --checkpoint-dir."""
    if args.resume and not args.checkpoint_dir:
        raise SystemExit("--resume needs --checkpoint-dir")
    if args.checkpoint_every < 0:
        raise SystemExit(f"--checkpoint-every {args.checkpoint_every}: use N >= 0")
    return cls(args.checkpoint_dir, args.checkpoint_every, resume=args.resume,
               keep=args.checkpoint_keep, seed=args.seed, **kwargs)


def fields(ck: TrainingCheckpoint, model: Any) -> dict[str, Any]:
    """metrics.json entries: the final parameters' hash and the checkpoint costs."""
    return {"params_sha256": params_sha256(model), "checkpoint": ck.summary()}
