"""Small classifiers for 16x16 digits; their penultimate features drive offline FID/KID/P&R.

On machines without Inception weights the image metrics use these networks the way clean-fid uses
Inception: `features(x)` (the penultimate layer) is the embedding, `forward(x)` the logits for
class coverage and per-frame confidence. Two architectures give two independent feature spaces:

- "cnn" (`DigitsClassifier`): plain conv + ReLU + max-pool + MLP, 128-d features; shipped as
  `fdistill/assets/digits_classifier.safetensors` (seed 0).
- "resnet" (`ResidualDigitsClassifier`): residual blocks with GroupNorm + GELU, strided-conv
  downsampling and global average pooling, 64-d features; shipped as
  `fdistill/assets/digits_classifier_b.safetensors` (seed 1).

Both are made by `scripts/train_classifier.py --arch {cnn,resnet}`; `load_digits_classifier`
builds the right class from the file's `config["arch"]` ("cnn" when absent, as in older files).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from torch import nn

ASSET_NAME = "digits_classifier.safetensors"
ASSET_NAME_B = "digits_classifier_b.safetensors"


def default_classifier_path(name: str = ASSET_NAME) -> Path:
    """Path of a shipped classifier's weights (default: the "cnn" one) inside the installed package."""
    return Path(str(resources.files("fdistill").joinpath("assets", name)))


class ClassifierBase(nn.Module):
    """What the metrics need from a digits classifier: `config` (with "arch", "num_classes",
    "image_size"), `features`, `forward` and `save`. Subclasses set `trunk` (images -> features)
    and `head` (features -> logits)."""

    arch: str
    config: dict[str, int | str]
    trunk: nn.Module
    head: nn.Module

    @property
    def feature_dim(self) -> int:
        return int(self.config["feature_dim"])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features. x: (B, 1, H, W) in [-1, 1] -> (B, feature_dim)."""
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits. x: (B, 1, H, W) in [-1, 1] -> (B, num_classes)."""
        return self.head(self.trunk(x))

    def save(self, path: str | Path) -> None:
        """Write weights + config (with "arch") as safetensors (to a temporary file, then an atomic rename)."""
        from fdistill.io import atomic_save_file

        atomic_save_file(self.state_dict(), path, metadata={"config": json.dumps({"arch": self.arch, **self.config})})


class DigitsClassifier(ClassifierBase):
    """Two conv blocks + an MLP head; 128-d non-negative (post-ReLU) features by default.

    Args:
        num_classes: number of logits.
        width: channels of the first block (the second has 2 * width).
        feature_dim: size of the penultimate feature vector.
        image_size: input side (must be divisible by 4).
    """

    arch = "cnn"

    def __init__(
        self, num_classes: int = 10, width: int = 32, feature_dim: int = 128, image_size: int = 16
    ) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size}")
        self.config = {
            "num_classes": num_classes,
            "width": width,
            "feature_dim": feature_dim,
            "image_size": image_size,
        }
        w = width
        self.trunk = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * w * (image_size // 4) ** 2, feature_dim), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(feature_dim, num_classes))


class _ResidualBlock(nn.Module):
    """x + conv(GELU(GN(conv(GELU(GN(x)))))) (pre-activation, shape-preserving)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(groups, channels), nn.GELU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(groups, channels), nn.GELU(), nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResidualDigitsClassifier(ClassifierBase):
    """Pre-activation residual CNN: stem, three stages of one residual block (width, 2 * width and
    feature_dim channels, stride-2 convs between them), GroupNorm + GELU, global average pooling.

    Differs in kind from `DigitsClassifier` (normalisation, smooth activation, skip connections,
    learned downsampling, no spatial MLP), so its features are a second, independent embedding.

    Args:
        num_classes: number of logits.
        width: channels of the first stage (the second has 2 * width).
        feature_dim: channels of the last stage = size of the pooled feature vector.
        image_size: input side (must be divisible by 4).
        groups: GroupNorm groups (must divide every stage's channels).
    """

    arch = "resnet"

    def __init__(self, num_classes: int = 10, width: int = 16, feature_dim: int = 64, image_size: int = 16,
                 groups: int = 4) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size}")
        if width % groups or feature_dim % groups:
            raise ValueError(f"groups ({groups}) must divide width ({width}) and feature_dim ({feature_dim})")
        self.config = {"num_classes": num_classes, "width": width, "feature_dim": feature_dim,
                       "image_size": image_size, "groups": groups}
        w, d = width, feature_dim
        self.trunk = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1),
            _ResidualBlock(w, groups),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            _ResidualBlock(2 * w, groups),
            nn.Conv2d(2 * w, d, 3, stride=2, padding=1),
            _ResidualBlock(d, groups),
            nn.GroupNorm(groups, d), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(d, num_classes)


ARCHITECTURES: dict[str, type[ClassifierBase]] = {"cnn": DigitsClassifier, "resnet": ResidualDigitsClassifier}
"""`config["arch"]` -> class; files without "arch" are "cnn"."""


def build_classifier(arch: str = "cnn", **config: int) -> ClassifierBase:
    """A fresh (untrained) classifier of architecture `arch` ("cnn" or "resnet")."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown classifier arch {arch!r}: use one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**config)


def load_digits_classifier(
    path: str | Path | None = None, device: str | torch.device = "cpu"
) -> ClassifierBase:
    """Load a frozen classifier in eval mode (default: the shipped "cnn" weights); its class comes
    from the file's `config["arch"]` ("cnn" when the file predates the field)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = default_classifier_path() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"digits classifier weights not found at {path}; run `python scripts/train_classifier.py`"
        )
    with safe_open(str(path), framework="pt") as f:
        config = json.loads((f.metadata() or {}).get("config", "{}"))
    model = build_classifier(config.pop("arch", "cnn"), **config)
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval().requires_grad_(False)
