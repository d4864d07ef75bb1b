"""The main job: a small CNN on scikit-learn's handwritten digits, data-parallel over MPI.

    hpcdl launch -n 4 -- python -m hpcdl.examples.train --out out/demo
    srun python -m hpcdl.examples.train --device cuda --amp --out $SCRATCH/run1

1,797 real 8x8 images ship inside scikit-learn (no download). 20% are held
out (stratified, the same split on every rank); each rank trains on its shard
of the rest (DistributedSampler), gradients are averaged by the
DistributedOptimizer, and every epoch the held-out set is evaluated in shards
and the counts summed. Rank 0 shows a progress bar, prints one line per
epoch, and writes ``metrics.json`` and ``curves.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import hpcdl
import hpcdl.torch as hdt

__all__ = ["SmallCNN", "load_data", "main"]


class SmallCNN(nn.Module):
    """Two 3x3 convolutions, a 2x2 pool and two dense layers (38,282 parameters)."""

    def __init__(self, classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width // 2, 3, padding=1)
        self.conv2 = nn.Conv2d(width // 2, width, 3, padding=1)
        self.fc1 = nn.Linear(width * 4 * 4, 64)
        self.fc2 = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def load_data(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): digits scaled to [0, 1], 20% held out, stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return (torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte),
            torch.from_numpy(yte))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hpcdl.examples.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--algorithm", default="auto", help=f"allreduce algorithm "
                   f"({', '.join(hpcdl.algorithm_names())})")
    p.add_argument("--compression", choices=("none", "fp16"), default="none")
    p.add_argument("--fusion-mb", type=float, default=hdt.DEFAULT_FUSION_MB,
                   help="bucket size in MB; 0 sends each tensor alone")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: float16 + GradScaler on cuda, bfloat16 on cpu")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per rank; 0: this node's cores / ranks on it")
    p.add_argument("--out", default="out/demo", help="folder for metrics.json and curves.png")
    return p.parse_args(argv)


def set_threads(local_size: int, threads: int = 0) -> int:
    """One share of this node's cores per rank.

    torch starts one intra-op thread per core in *every* rank; with several
    ranks per node they all spin on the same cores and a step gets slower,
    not faster (4 ranks x 2 threads on 2 cores ran ~2x slower here).
    """
    if threads <= 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else os.cpu_count()
        threads = max(1, (cores or 1) // max(1, local_size))
    torch.set_num_threads(threads)
    return threads


def make_compression(name: str) -> Any:
    if name == "none":
        return None
    try:
        from hpcdl.compression import FP16Compressor
    except ImportError as exc:
        raise SystemExit(f"--compression fp16 needs hpcdl.compression ({exc})") from exc
    return FP16Compressor()


def pick_device(name: str, ctx: hpcdl.Context) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"rank {ctx.rank}: --device cuda but torch.cuda.is_available() is "
                             "False (CPU build of torch, or no GPU on this node)")
        return torch.device("cuda", ctx.gpu if ctx.gpu is not None else 0)
    return torch.device("cpu")


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: hpcdl.Context,
             device: torch.device) -> float:
    """Accuracy on (x, y): each rank scores every size-th sample, then the counts are summed."""
    model.eval()
    with torch.no_grad():
        mine = slice(ctx.rank, None, ctx.size)
        pred = model(x[mine].to(device)).argmax(1).cpu()
        counts = torch.tensor([float((pred == y[mine]).sum()), float(len(pred))],
                              dtype=torch.float64)
    model.train()
    hpcdl.allreduce(counts, op="sum")
    return float(counts[0] / counts[1])


def save_plot(epochs: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e = [r["epoch"] for r in epochs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(e, [r["loss"] for r in epochs], marker="o")
    a.set(xlabel="epoch", ylabel="training loss", yscale="log", title="loss")
    b.plot(e, [100 * r["accuracy"] for r in epochs], marker="o", color="tab:green")
    b.set(xlabel="epoch", ylabel="test accuracy (%)", title="held-out accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    ctx = hpcdl.init()
    threads = set_threads(ctx.local_size, args.threads)
    device = pick_device(args.device, ctx)
    torch.manual_seed(args.seed)
    # Rank 0 reads and splits the data and sends it to the others: importing
    # scikit-learn costs every rank ~1 CPU-second, which on a shared laptop
    # core is longer than an epoch.
    xtr, ytr, xte, yte = hdt.broadcast_object(load_data(args.seed) if ctx.rank == 0 else None)

    model = SmallCNN().to(device)
    hdt.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = hdt.DistributedOptimizer(torch.optim.Adam(model.parameters(), lr=args.lr),
                                   named_parameters=model.named_parameters(),
                                   compression=make_compression(args.compression),
                                   fusion_threshold_mb=args.fusion_mb, algorithm=args.algorithm)
    hdt.broadcast_optimizer_state(opt, root_rank=0)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    # bfloat16 has float32's exponent range: no loss scaling needed on the CPU.
    scaler = hdt.GradScaler(device.type, enabled=args.amp and device.type == "cuda")

    train = torch.utils.data.TensorDataset(xtr, ytr)
    sampler = hdt.DistributedSampler(train, shuffle=True, seed=args.seed)
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, sampler=sampler)
    steps = len(loader)

    from tqdm import tqdm

    bar = tqdm(total=args.epochs * steps, disable=ctx.rank != 0, unit="step", file=sys.stderr,
               dynamic_ncols=True, desc=f"{ctx.size} rank(s)")
    history: list[dict[str, float]] = []
    for epoch in range(1, args.epochs + 1):
        sampler.set_epoch(epoch)
        start = time.perf_counter()
        # Summed on the device: a float(loss) per step would wait for the GPU every step.
        running = torch.zeros(2, dtype=torch.float64, device=device)
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad()
            with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
                loss = nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            running[0] += loss.detach().double() * len(y)
            running[1] += len(y)
            bar.update(1)
        loss_sum = running.cpu()
        hpcdl.allreduce(loss_sum, op="sum")
        elapsed = time.perf_counter() - start
        accuracy = evaluate(model, xte, yte, ctx, device)
        row = {"epoch": epoch, "loss": float(loss_sum[0] / loss_sum[1]), "accuracy": accuracy,
               "samples_per_s": float(loss_sum[1]) / elapsed}
        history.append(row)
        if ctx.rank == 0:
            bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{accuracy:.3f}")
            bar.write(f"epoch {epoch:3d}  loss {row['loss']:.4f}  test accuracy "
                      f"{100 * accuracy:6.2f}%  {row['samples_per_s']:8.0f} samples/s")
    bar.close()

    metrics = {"test_accuracy": history[-1]["accuracy"] if history else
               evaluate(model, xte, yte, ctx, device),
               "ranks": ctx.size,
               "settings": {**{k: v for k, v in vars(args).items()}, "device": str(device),
                            "threads_per_rank": threads, "global_batch": args.batch_size * ctx.size,
                            "train_samples": len(train), "test_samples": len(yte),
                            "buckets": len(opt.buckets)},
               "epochs": history}
    if ctx.rank == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        save_plot(history, out / "curves.png")
        print(f"test accuracy {100 * metrics['test_accuracy']:.2f}% on {len(yte)} held-out "
              f"images, {ctx.size} rank(s)")
        print(f"wrote {out / 'metrics.json'} and {out / 'curves.png'}")
    return metrics


if __name__ == "__main__":
    main()
