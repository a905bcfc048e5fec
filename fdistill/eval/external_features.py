"""Feature spaces this project did not design, to judge digits generators where nobody tuned.

``EXTERNAL_SPACES`` names two, usable wherever a feature space is named (``compute_fid``,
``image_metrics(feature_spaces=...)``):

- ``"pixels"``: the raw image, flattened (16×16 digits in [-1, 1] → 256-d). No learned features at
  all; with the unbiased KID (``kid_from_features``) it is a kernel distance on pixels.
- ``"sklearn_mlp"``: the hidden ReLU activations (100-d) of scikit-learn's ``MLPClassifier`` with its
  default architecture, fit with ``random_state=0`` on scikit-learn's own 8×8 ``load_digits`` images
  (the 1,500-image training split, values 0..16). Images are average-pooled to 8×8 and scaled to that
  0..16 range first. The network is rebuilt deterministically on first use (seconds) and cached per
  process; nothing in it was chosen by looking at generated samples.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

EXTERNAL_SPACES: dict[str, str] = {
    "pixels": "raw pixels, flattened (16x16 digits: 256-d)",
    "sklearn_mlp": "hidden layer (100-d) of scikit-learn's MLPClassifier fit on load_digits 8x8, random_state 0",
}
"""Feature spaces from outside the project -> what they are."""

SKLEARN_SIZE = 8
SKLEARN_MAX = 16.0
SKLEARN_SEED = 0
SKLEARN_MAX_ITER = 1000  # scikit-learn's default (200) stops before its own tolerance is reached on digits


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C·H·W) float features: the pixels themselves."""
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    return images.float().flatten(1)


def to_sklearn_digits(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, 64) float64 in scikit-learn's digits format: grey by channel
    mean, average-pooled to 8×8, scaled to 0..16."""
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    x = images.float().mean(dim=1, keepdim=True)
    x = F.adaptive_avg_pool2d(x, SKLEARN_SIZE)
    x = (x.clamp(-1, 1) + 1) * (SKLEARN_MAX / 2)
    return x.flatten(1).double().cpu().numpy()


@lru_cache(maxsize=1)
def sklearn_digits_mlp():
    """scikit-learn's ``MLPClassifier`` (default architecture and solver, ``random_state=0``) fit on the
    8×8 digits training split (1,500 images, 0..16): the ``sklearn_mlp`` space's network, built once
    per process.

    The fit runs on one BLAS thread: summation order changes with the thread count, and over a few
    hundred Adam epochs so do the weights; one thread is also the fastest on a busy machine.
    """
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    from fdistill.data.digits import load_digits_8x8

    x, y = load_digits_8x8("train")
    x = (x * SKLEARN_MAX).reshape(len(x), -1).double().numpy()
    with threadpool_limits(limits=1):
        return MLPClassifier(max_iter=SKLEARN_MAX_ITER, random_state=SKLEARN_SEED).fit(x, y.numpy())


def sklearn_mlp_features(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> (B, 100): the hidden ReLU activations of :func:`sklearn_digits_mlp`."""
    mlp = sklearn_digits_mlp()
    hidden = to_sklearn_digits(images) @ mlp.coefs_[0] + mlp.intercepts_[0]
    return torch.from_numpy(np.maximum(hidden, 0.0))


def sklearn_mlp_predict(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> (B,) class predicted by :func:`sklearn_digits_mlp` (an outside class check)."""
    return torch.from_numpy(sklearn_digits_mlp().predict(to_sklearn_digits(images)))


def external_feature_extractor(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The extractor of an ``EXTERNAL_SPACES`` name; ValueError naming the valid ones otherwise."""
    extractors = {"pixels": pixel_features, "sklearn_mlp": sklearn_mlp_features}
    if name not in extractors:
        raise ValueError(f"unknown external feature space {name!r}: use one of {sorted(EXTERNAL_SPACES)}")
    return extractors[name]
