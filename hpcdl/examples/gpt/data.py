"""The text: this Python's own standard library sources, on every machine, no download.

The ``.py`` files directly under the stdlib folder, sorted by name, are read as
UTF-8 bytes up to ``limit`` bytes; the first 90% train, the rest is held out.
Batches are drawn by a generator seeded from (seed, step), so every rank
builds the same global batch and takes its own rows: the global batch is the
same whatever the layout and rank count.
"""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path

import numpy as np
import torch

__all__ = ["load_text", "unigram_entropy", "global_batch"]


def load_text(limit: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(train bytes, held-out bytes, number of files read) as uint8 tensors."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, total, files = [], 0, 0
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()
        parts.append(data[:limit - total])
        total += len(parts[-1])
        files += 1
        if total >= limit:
            break
    if total < 10_000:
        raise RuntimeError(f"found only {total} bytes of Python sources under {root}")
    text = torch.from_numpy(np.frombuffer(b"".join(parts), dtype=np.uint8).copy())
    cut = int(0.9 * len(text))
    return text[:cut], text[cut:], files


def unigram_entropy(text: torch.Tensor) -> float:
    """Entropy of the byte frequencies, in nats: the loss of the best model that
    ignores context. A language model must fall well below it."""
    counts = torch.bincount(text.long(), minlength=256).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def global_batch(text: torch.Tensor, batch: int, context: int, seed: int,
                 step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` windows of ``context`` inputs and their next-byte targets (int64)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, len(text) - context - 1, (batch,), generator=g)
    rows = torch.stack([text[s:s + context + 1] for s in starts.tolist()]).long()
    return rows[:, :-1], rows[:, 1:]


def bits(nats: float) -> float:
    return nats / math.log(2)
