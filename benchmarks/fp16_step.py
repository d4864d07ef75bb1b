"""Training-step time of hpcdl.horovod with fp32, fp16 and no communication, step by step.

    hpcdl launch -n 2 -- python benchmarks/fp16_step.py [--steps 30] [--json out.json]

The synthetic benchmark's model (the torchvision shim's ``small_cnn``, batch
32 of 3x224x224) is built three times with the same weights: wrapped in
``hvd.DistributedOptimizer`` with ``Compression.none``, with
``Compression.fp16``, and not wrapped at all (the ceiling: the same process,
no communication). The three train *interleaved*, one step each in turn, so a
shared machine's drift hits all three alike; benchmarks/horovod_compare.py
runs them as separate jobs instead (as a user would), which a busy machine
makes much noisier. Prints the median step time of each and its ratio to the
ceiling's (rank 0; every rank waits for the slowest in the reductions).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "horovod_examples" / "shim"))

from torchvision import models  # the shim above, not the real torchvision

import hpcdl.horovod.torch as hvd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    hvd.init()
    torch.manual_seed(0)
    base = models.small_cnn()
    configs = {}
    for name, comp in (("fp32", hvd.Compression.none), ("fp16", hvd.Compression.fp16),
                       ("ceiling", None)):
        model = models.small_cnn()
        model.load_state_dict(base.state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        if comp is not None:
            opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters(),
                                           compression=comp)
        configs[name] = (model, opt)
    data = torch.randn(args.batch_size, 3, 224, 224)
    target = torch.randint(0, 1000, (args.batch_size,))
    times: dict[str, list[float]] = {k: [] for k in configs}
    for i in range(args.warmup + args.steps):
        for name, (model, opt) in configs.items():
            t0 = time.perf_counter()
            opt.zero_grad()
            F.cross_entropy(model(data), target).backward()
            opt.step()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    if hvd.rank() == 0:
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(f"{hvd.size()} ranks, small_cnn, batch {args.batch_size}, {args.steps} "
              f"interleaved steps each, torch threads {torch.get_num_threads()}")
        print(f"{'config':10s}{'step ms':>10s}{'ceiling/x':>11s}")
        for k, v in med.items():
            print(f"{k:10s}{v:10.1f}{med['ceiling'] / v:11.3f}")
        if args.json:
            Path(args.json).write_text(json.dumps({"step_s": times, "median_ms": med,
                                                   "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
