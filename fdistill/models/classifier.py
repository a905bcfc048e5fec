"""A small CNN classifier for 16x16 digits; its penultimate features drive offline FID/KID/P&R.

On machines without Inception weights the image metrics use this network the way clean-fid uses
Inception: `features(x)` (the 128-d penultimate layer) is the embedding, `forward(x)` the logits
for class coverage and per-frame confidence. The trained weights ship in
`fdistill/assets/digits_classifier.safetensors` (made by `scripts/train_classifier.py`).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from torch import nn

ASSET_NAME = "digits_classifier.safetensors"


def default_classifier_path() -> Path:
    """Path of the shipped classifier weights inside the installed package."""
    return Path(str(resources.files("fdistill").joinpath("assets", ASSET_NAME)))


class DigitsClassifier(nn.Module):
    """Two conv blocks + an MLP head.

    Args:
        num_classes: number of logits.
        width: channels of the first block (the second has 2 * width).
        feature_dim: size of the penultimate feature vector.
        image_size: input side (must be divisible by 4).
    """

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

    @property
    def feature_dim(self) -> int:
        return int(self.config["feature_dim"])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features. x: (B, 1, H, W) in [-1, 1] -> (B, feature_dim), non-negative."""
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits. x: (B, 1, H, W) in [-1, 1] -> (B, num_classes)."""
        return self.head(self.trunk(x))

    def save(self, path: str | Path) -> None:
        """Write weights + config as safetensors (to a temporary file, then an atomic rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(tmp), metadata={"config": json.dumps(self.config)})
        tmp.chmod(0o644)
        tmp.replace(path)


def load_digits_classifier(
    path: str | Path | None = None, device: str | torch.device = "cpu"
) -> DigitsClassifier:
    """Load a frozen `DigitsClassifier` in eval mode (default: the shipped weights)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = default_classifier_path() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"digits classifier weights not found at {path}; run `python scripts/train_classifier.py`"
        )
    with safe_open(str(path), framework="pt") as f:
        config = json.loads((f.metadata() or {}).get("config", "{}"))
    model = DigitsClassifier(**config)
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval().requires_grad_(False)
