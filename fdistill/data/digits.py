"""The digits testbed: scikit-learn's bundled 8x8 handwritten digits, upsampled to 16x16.

`sklearn.datasets.load_digits` ships 1,797 grey-scale 8x8 images (values 0..16, ten classes)
inside scikit-learn, so this data set needs no download. Images are scaled to [0, 1], upsampled
to 16x16 with *bilinear* interpolation (`align_corners=False`; bilinear never overshoots, so the
range is kept without clipping) and mapped to [-1, 1]. The held-out split is a fixed, stratified
297-image subset chosen with a fixed seed, identical on every machine.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

Split = Literal["train", "test", "all"]

NUM_CLASSES = 10
IMAGE_SIZE = 16
NUM_TEST = 297
SPLIT_SEED = 0
SPLITS: tuple[str, ...] = ("train", "test", "all")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}: expected one of {', '.join(SPLITS)}")


@lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


@lru_cache(maxsize=1)
def _split_indices() -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    _, labels = _raw_digits()
    index = np.arange(len(labels))
    train, test = train_test_split(
        index, test_size=NUM_TEST, stratify=labels, random_state=SPLIT_SEED, shuffle=True
    )
    return {"train": np.sort(train), "test": np.sort(test), "all": index}


def load_digits_8x8(split: Split = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Native-resolution digits in [0, 1] (the glyphs used by moving digits).

    Returns:
        images: (N, 8, 8) float32 in [0, 1]; labels: (N,) int64.
    """
    _check_split(split)
    images, labels = _raw_digits()
    idx = _split_indices()[split]
    return torch.from_numpy(images[idx] / 16.0), torch.from_numpy(labels[idx])


def upsample_digits(images_01: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Bilinear upsampling of (N, h, w) images in [0, 1] to (N, 1, size, size) in [0, 1]."""
    return F.interpolate(images_01[:, None], size=(size, size), mode="bilinear", align_corners=False)


def load_digits_tensors(split: Split = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The digits data set as tensors.

    Args:
        split: "train" (1,500 images), "test" (297 held-out images, stratified) or "all" (1,797).

    Returns:
        images: (N, 1, 16, 16) float32 in [-1, 1]; labels: (N,) int64 in 0..9.
    """
    images, labels = load_digits_8x8(split)
    return upsample_digits(images) * 2.0 - 1.0, labels


class DigitsDataset(Dataset):
    """Map-style dataset of `(image, label)`: image (1, 16, 16) in [-1, 1], label int64 scalar."""

    def __init__(self, split: Split = "train") -> None:
        self.split = split
        self.images, self.labels = load_digits_tensors(split)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]
