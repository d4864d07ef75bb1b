"""The main job: a small CNN on scikit-learn's handwritten digits, over MPI.

    hpcdl launch -n 4 -- python -m hpcdl.examples.train --out out/demo
    srun python -m hpcdl.examples.train --device cuda --amp --out $SCRATCH/run1

1,797 real 8x8 images ship inside scikit-learn (no download). 20% are held
out (stratified, the same split on every rank). ``--mode`` picks how ranks
cooperate (``allreduce``, the default: data parallel with the
DistributedOptimizer); every mode writes the same ``metrics.json`` (and
``curves.png``) into ``--out``, so runs of every mode compare side by side.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch

import hpcdl
import hpcdl.torch as hdt

from . import checkpointing, failover
from .common import SmallCNN, load_data, pick_device, save_plot, set_threads
from .modes import DEFAULT_MODE, MODES, load_mode

__all__ = ["SmallCNN", "load_data", "set_threads", "parse_args", "main"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hpcdl.examples.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=tuple(MODES), default=DEFAULT_MODE,
                   help=f"how ranks cooperate (default {DEFAULT_MODE})")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per rank; 0: this node's cores / ranks on it")
    p.add_argument("--out", default="out/demo", help="folder for metrics.json and curves.png")
    checkpointing.add_arguments(p)
    failover.add_arguments(p)
    # one module may serve several --mode names (ps-sync, ps-async, ssp): its flags once
    for name in {module: name for name, module in MODES.items()}.values():
        load_mode(name).add_arguments(p)
    return p.parse_args(argv)


#: The modes that can go on without a dead rank (``--on-failure shrink``): their loop.
SHRINK_MODES = {"allreduce": "hpcdl.examples.modes.allreduce_elastic",
                # these modes' own modules handle --on-failure (docs/fault-tolerance.md)
                "ps-sync": "hpcdl.examples.modes.ps", "ps-async": "hpcdl.examples.modes.ps",
                "ssp": "hpcdl.examples.modes.ps", "preduce": "hpcdl.examples.modes.preduce"}


def _shrink_mode(args: argparse.Namespace) -> Any:
    """The module that runs ``args.mode`` under ``--on-failure shrink``, after refusing
    what cannot work (refused, not ignored: a job that believes it survives failures and
    does not is lost at the first one)."""
    if args.mode not in SHRINK_MODES:
        raise SystemExit(f"--on-failure shrink: --mode {args.mode} cannot go on without a dead "
                         f"rank yet; modes that can: {', '.join(SHRINK_MODES)} (or keep the "
                         "default --on-failure abort)")
    if os.environ.get("HPCDL_FT") != "1":
        raise SystemExit("--on-failure shrink needs fault-tolerant MPI: launch with "
                         "`hpcdl launch --ft -n N -- python -m hpcdl.examples.train ...` "
                         "(mpiexec --with-ft ulfm and HPCDL_FT=1; docs/fault-tolerance.md)")
    if args.min_ranks < 1:
        raise SystemExit(f"--min-ranks {args.min_ranks}: use K >= 1")
    return importlib.import_module(SHRINK_MODES[args.mode])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    mode = load_mode(args.mode)
    if (args.checkpoint_dir or args.resume) and not getattr(mode, "CHECKPOINTS", False):
        # Refused, not ignored: a job that believes it is checkpointed and is not loses
        # everything when it is killed. (Every rank parses the same flags: all exit.)
        raise SystemExit(f"--checkpoint-dir/--resume: --mode {args.mode} does not checkpoint "
                         "(its module does not set CHECKPOINTS = True: its state is not saved); "
                         "modes that do: " + ", ".join(
                             n for n in MODES if getattr(load_mode(n), "CHECKPOINTS", False)))
    if args.on_failure == "shrink":
        mode = _shrink_mode(args)
    ctx = hpcdl.init()
    threads = set_threads(ctx.local_size, args.threads)
    device = pick_device(args.device, ctx)
    torch.manual_seed(args.seed)
    # Rank 0 reads and splits the data and sends it to the others: importing
    # scikit-learn costs every rank ~1 CPU-second, which on a shared laptop
    # core is longer than an epoch.
    data = hdt.broadcast_object(load_data(args.seed) if ctx.rank == 0 else None)

    result = mode.run(args, ctx, device, data)
    metrics = {"test_accuracy": result.test_accuracy,
               "ranks": ctx.size,
               "mode": args.mode,
               "settings": {**vars(args), "device": str(device), "threads_per_rank": threads,
                            "global_batch": args.batch_size * ctx.size,
                            "train_samples": len(data.y_train), "test_samples": len(data.y_test),
                            **result.settings},
               "failures": [],   # filled by --on-failure shrink (docs/fault-tolerance.md)
               **result.fields,
               "epochs": result.history}
    if result.writer:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        save_plot(result.history, out / "curves.png")
        print(f"test accuracy {100 * metrics['test_accuracy']:.2f}% on {len(data.y_test)} "
              f"held-out images, {ctx.size} rank(s), mode {args.mode}")
        print(f"wrote {out / 'metrics.json'} and {out / 'curves.png'}")
    return metrics


if __name__ == "__main__":
    main()
