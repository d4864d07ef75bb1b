"""``MNIST`` served from scikit-learn's bundled digits, upscaled to 28x28 (no download)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

_TRAIN = 1500


def _images() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    # 8x8 -> 20x20 centred in 28x28, like MNIST's 20x20 digit box.
    big = torch.nn.functional.interpolate(x, size=(20, 20), mode="bilinear",
                                          align_corners=False)
    canvas = torch.zeros(len(x), 1, 28, 28)
    canvas[:, :, 4:24, 4:24] = big
    return (canvas[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy(), digits.target


class MNIST(torch.utils.data.Dataset):
    def __init__(self, root: str, train: bool = True, download: bool = False,
                 transform: Callable[[Any], Any] | None = None) -> None:
        images, labels = _images()
        part = slice(0, _TRAIN) if train else slice(_TRAIN, None)
        self.data, self.targets = images[part], labels[part].astype(np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = self.data[i]
        return (self.transform(img) if self.transform else img), int(self.targets[i])
