"""What every mode of the main job shares: the data, the model, evaluation, the plot.

The modes (``hpcdl/examples/modes/``) differ only in how gradients or
parameters travel between ranks; they all train :class:`SmallCNN` on the same
split of scikit-learn's digits and report the same per-epoch rows, so the
``metrics.json`` of every mode compares side by side.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

import hpcdl

__all__ = ["SmallCNN", "Data", "RunResult", "Progress", "load_data", "set_threads", "pick_device",
           "make_compression", "evaluate", "save_plot", "epoch_row"]


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


class Data(NamedTuple):
    """The digits split: training and held-out images (N, 1, 8, 8) in [0, 1] and labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass
class RunResult:
    """What a mode hands back to the driver, which writes ``metrics.json``.

    ``history`` holds one row per epoch with at least ``epoch``, ``loss``,
    ``accuracy`` and ``samples_per_s`` (see :func:`epoch_row`). ``settings``
    and ``fields`` add mode-specific entries to ``metrics.json`` (never rename
    the common ones). ``writer`` marks the one rank that writes the files.
    """

    history: list[dict[str, float]]
    test_accuracy: float
    writer: bool
    settings: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)


def load_data(seed: int) -> Data:
    """Digits scaled to [0, 1], 20% held out, stratified (the same split for every seed user)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return Data(torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte),
                torch.from_numpy(yte))


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
    from hpcdl.compression import FP16Compressor

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


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
             comm: Any = None) -> float:
    """Accuracy on (x, y): each rank of ``comm`` scores every size-th sample, then the counts
    are summed (``comm=None``: the default communicator)."""
    rank, size = (comm.rank, comm.size) if comm is not None else \
        (hpcdl.get_context().rank, hpcdl.get_context().size)
    model.eval()
    with torch.no_grad():
        mine = slice(rank, None, size)
        pred = model(x[mine].to(device)).argmax(1).cpu()
        counts = torch.tensor([float((pred == y[mine]).sum()), float(len(pred))],
                              dtype=torch.float64)
    model.train()
    hpcdl.allreduce(counts, op="sum", comm=comm)
    return float(counts[0] / counts[1])


def epoch_row(epoch: int, loss: float, accuracy: float, samples: float,
              seconds: float) -> dict[str, float]:
    """One ``history`` row of ``metrics.json``; every mode writes these four fields."""
    return {"epoch": epoch, "loss": loss, "accuracy": accuracy,
            "samples_per_s": samples / seconds if seconds > 0 else 0.0}


class Progress:
    """The progress bar (stderr) and the per-epoch line every mode prints on one rank."""

    def __init__(self, total: int, show: bool, desc: str, unit: str = "step") -> None:
        from tqdm import tqdm

        self.show = show
        self.bar = tqdm(total=total, disable=not show, unit=unit, file=sys.stderr,
                        dynamic_ncols=True, desc=desc)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def epoch(self, row: dict[str, float]) -> None:
        """Report one :func:`epoch_row` (on the showing rank only)."""
        if self.show:
            self.bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.3f}")
            self.bar.write(f"epoch {row['epoch']:3d}  loss {row['loss']:.4f}  test accuracy "
                           f"{100 * row['accuracy']:6.2f}%  {row['samples_per_s']:8.0f} samples/s")

    def close(self) -> None:
        self.bar.close()


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
