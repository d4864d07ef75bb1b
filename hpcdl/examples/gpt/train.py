"""The training loop, metrics.json and the loss curve of ``python -m hpcdl.examples.gpt``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import hpcdl
import hpcdl.torch

from ..common import set_threads
from . import checkpoint
from .data import global_batch, load_text, unigram_entropy
from .model import GPT, Config
from .parallel import LAYOUTS, Layout, parallelize

__all__ = ["parse_args", "run", "train", "main"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hpcdl.examples.gpt")
    p.add_argument("--parallel", choices=LAYOUTS, default="dp")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16, help="global batch (sequences)")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-bytes", type=int, default=2_000_000,
                   help="bytes of stdlib source to read (90%% train, 10%% held out)")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="torch threads per rank (0: share)")
    p.add_argument("--out", default="out/gpt", help="folder for metrics.json and curves.png")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--checkpoint-every", type=int, default=0, help="steps (0: at the end only)")
    p.add_argument("--resume", action="store_true", help="from the newest in --checkpoint-dir")
    return p.parse_args(argv)


def _evaluate(lay: Layout, held: torch.Tensor, args: argparse.Namespace) -> tuple[float, float]:
    """(held-out loss, next-character accuracy): every rank the same fixed batches."""
    loss = correct = total = 0.0
    with torch.no_grad():
        for i in range(args.eval_batches):
            x, y = global_batch(held, args.batch, args.context, args.seed + 1, i)
            logits = lay.model(x)
            loss += float(torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y.reshape(-1)))
            correct += float((logits.argmax(-1) == y).sum())
            total += y.numel()
    return loss / args.eval_batches, correct / total


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train; returns metrics.json's content (with ``step_losses``) on every rank."""
    return train(args)[0]


def train(args: argparse.Namespace) -> tuple[dict[str, Any], Layout]:
    """Train; (metrics.json's content, the trained layout) on every rank."""
    ctx = hpcdl.init()
    threads = set_threads(ctx.local_size, args.threads)
    if not dist.is_initialized():
        hpcdl.torch.init_process_group()
    train, held, files = load_text(args.text_bytes)
    entropy = unigram_entropy(train)
    cfg = Config(context=args.context, dim=args.dim, heads=args.heads, layers=args.layers)
    torch.manual_seed(args.seed)
    model = GPT(cfg)
    params = sum(p.numel() for p in model.parameters())
    lay = parallelize(args.parallel, model)
    if args.batch % lay.dp_size:
        raise SystemExit(f"rank {ctx.rank}: --batch {args.batch} does not split over "
                         f"{lay.dp_size} data-parallel ranks")
    opt = torch.optim.AdamW(lay.model.parameters(), lr=args.lr, weight_decay=0.0)
    start = checkpoint.load_newest(args.checkpoint_dir, lay.model, opt) \
        if args.resume and args.checkpoint_dir else 0
    rows = args.batch // lay.dp_size
    mine = slice(lay.dp_rank * rows, (lay.dp_rank + 1) * rows)
    losses: list[float] = []
    history: list[dict[str, float]] = []
    t0, since = time.perf_counter(), start
    for step in range(start, args.steps):
        x, y = global_batch(train, args.batch, args.context, args.seed, step)
        loss = lay.model(x[mine], y[mine])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        mean = torch.tensor([loss.item()], dtype=torch.float64)
        hpcdl.allreduce(mean, op="avg")  # tp ranks repeat their pair's value: still the mean
        losses.append(float(mean[0]))
        last = step + 1 == args.steps
        if (step + 1) % args.eval_every == 0 or last:
            seconds = time.perf_counter() - t0
            test_loss, accuracy = _evaluate(lay, held, args)
            n = step + 1 - since
            history.append({"epoch": len(history) + 1, "step": step + 1,
                             "loss": sum(losses[-n:]) / n, "accuracy": accuracy,
                             "samples_per_s": n * args.batch / seconds,
                             "tokens_per_s": n * args.batch * args.context / seconds,
                             "test_loss": test_loss})
            if ctx.rank == 0:
                print(f"step {step + 1:5d}  train loss {history[-1]['loss']:.4f}  held-out "
                      f"loss {test_loss:.4f}  accuracy {100 * accuracy:5.2f}%  "
                      f"{history[-1]['tokens_per_s']:8.0f} tokens/s", flush=True)
            every = args.checkpoint_every
            if args.checkpoint_dir and (last or (every and (step + 1) % every == 0)):
                checkpoint.save(args.checkpoint_dir, step + 1, lay.model, opt)
            t0, since = time.perf_counter(), step + 1
    final = history[-1] if history else {"accuracy": float("nan"), "test_loss": float("nan")}
    return {"test_accuracy": final["accuracy"], "ranks": ctx.size, "mode": f"gpt-{args.parallel}",
            "settings": {**vars(args), "device": "cpu", "threads_per_rank": threads,
                         "global_batch": args.batch, "train_samples": len(train),
                         "test_samples": len(held), "stdlib_files": files, "params": params,
                         "tensor_parallel": lay.tp_size, "data_parallel": lay.dp_size,
                         "resumed_at_step": start},
            "test_loss": final["test_loss"], "unigram_entropy": entropy,
            "step_losses": losses, "epochs": history}, lay


def save_curve(metrics: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = metrics["settings"]["resumed_at_step"]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot(range(start + 1, start + 1 + len(metrics["step_losses"])), metrics["step_losses"],
            lw=0.8, label="training loss")
    ax.plot([r["step"] for r in metrics["epochs"]], [r["test_loss"] for r in metrics["epochs"]],
            "o-", label="held-out loss")
    ax.axhline(metrics["unigram_entropy"], color="gray", ls="--", label="unigram entropy")
    ax.set(xlabel="step", ylabel="nats per character",
           title=f"{metrics['mode']}, {metrics['ranks']} rank(s)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import hpcdl.torch  # noqa: F401 - registers the backend

    metrics = run(parse_args(argv))
    if metrics["ranks"] and hpcdl.get_context().rank == 0:
        out = Path(metrics["settings"]["out"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        save_curve(metrics, out / "curves.png")
        print(f"held-out loss {metrics['test_loss']:.4f} nats/char (unigram entropy "
              f"{metrics['unigram_entropy']:.4f}), accuracy {100 * metrics['test_accuracy']:.2f}%"
              f"; wrote {out / 'metrics.json'} and {out / 'curves.png'}")
    return metrics


if __name__ == "__main__":
    main()
