"""torchvision.transforms' Compose, ToTensor and Normalize (what pytorch_mnist.py uses)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x


class ToTensor:
    """HxW (or HxWxC) uint8 image -> CxHxW float tensor in [0, 1]."""

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).float().div_(255.0)
        return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)


class Normalize:
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return (t - self.mean) / self.std
