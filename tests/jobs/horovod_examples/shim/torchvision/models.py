"""``small_cnn``: a small ImageNet-shaped model for the synthetic benchmark on CPUs.

About 1.1 M parameters (4.4 MB of float32 gradients per step), so both the
compute and the allreduce matter at a batch of 32 on a CPU. Other torchvision
model names raise, saying which one this shim has.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def small_cnn(num_classes: int = 1000) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 7, stride=4, padding=3), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, num_classes))


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError(f"the torchvision shim of tests/jobs/horovod_examples has no model {name!r}; "
                         "run the benchmark with --model small_cnn")
