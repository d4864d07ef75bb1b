"""The transformer part of benchmarks/torch_backend.py: FSDP2 and FSDP2 x TP of the GPT
example (hpcdl/examples/gpt) over "hpcdl" and over gloo, in the same job.

Each (layout, backend) gets its own copy of the model, split over its own groups
(gloo groups made beside the hpcdl ones), and the same fixed global batch of
text; rounds alternate between them so a noisy neighbour hurts all alike. The
slowest rank's median step sets tokens/s (global batch x context / step time).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import torch

import hpcdl
from hpcdl.examples.gpt.data import global_batch, load_text
from hpcdl.examples.gpt.model import GPT, Config
from hpcdl.examples.gpt.parallel import parallelize

__all__ = ["add_arguments", "run_gpt", "GPT_MODES"]

GPT_MODES = ("fsdp-hpcdl", "fsdp-gloo", "fsdp-tp-hpcdl", "fsdp-tp-gloo")


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("transformer (--models gpt)")
    g.add_argument("--gpt-batch", type=int, default=16, help="global batch (sequences)")
    g.add_argument("--gpt-context", type=int, default=128)
    g.add_argument("--gpt-dim", type=int, default=256)
    g.add_argument("--gpt-layers", type=int, default=4)


def _step(mode: str, cfg: Config, args: argparse.Namespace, text: torch.Tensor) -> Callable:
    layout, backend = mode.rsplit("-", 1)
    torch.manual_seed(0)
    lay = parallelize(layout, GPT(cfg), backend=backend)
    opt = torch.optim.AdamW(lay.model.parameters(), lr=1e-3)
    x, y = global_batch(text, args.gpt_batch, cfg.context, 0, 0)
    rows = args.gpt_batch // lay.dp_size
    x, y = x[lay.dp_rank * rows:(lay.dp_rank + 1) * rows], y[lay.dp_rank * rows:][:rows]

    def step() -> None:
        loss = lay.model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def run_gpt(args: argparse.Namespace, ctx: Any) -> tuple[int, dict[str, float]]:
    """(parameters, median seconds per step of each mode on this rank)."""
    cfg = Config(context=args.gpt_context, dim=args.gpt_dim, heads=4, layers=args.gpt_layers)
    text = load_text(1_000_000)[0]
    modes = [m for m in GPT_MODES if not (m.startswith("fsdp-tp") and ctx.size % 2)]
    steps = {m: _step(m, cfg, args, text) for m in modes}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for m in modes:
        for _ in range(args.warmup):
            steps[m]()
    for _ in range(args.iters):
        for m in modes:
            hpcdl.barrier()
            t = time.perf_counter()
            for _ in range(args.steps):
                steps[m]()
            hpcdl.barrier()
            times[m].append((time.perf_counter() - t) / args.steps)
    params = sum(p.numel() for p in GPT(cfg).parameters())
    return params, {m: statistics.median(v) for m, v in times.items()}
