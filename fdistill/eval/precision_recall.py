"""Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019), density and coverage (Naeem et
al., ICML 2020) on feature vectors.

Each set's manifold is the union of balls centred at its samples, with radius the distance to
the sample's k-th nearest neighbour within the same set. Precision = fraction of generated
samples inside the real manifold (quality); recall = fraction of real samples inside the
generated manifold. Density and coverage use the real balls only, so a few outlying generated
samples cannot inflate them: density = how many real balls hold a generated sample, on average,
divided by k (≈ 1 when the two sets match, > 1 when samples crowd the real modes); coverage =
fraction of real balls that hold at least one generated sample (diversity).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from fdistill.eval.fid import FeatureExtractor, extract_features


def _as_tensor(features: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(features, dtype=torch.float64).cpu()


def knn_radii(features: torch.Tensor, k: int = 3, batch_size: int = 1024) -> torch.Tensor:
    """Distance of each sample to its k-th nearest neighbour in the same set (self excluded).

    features: (N, D) with N > k -> radii (N,).
    """
    n = len(features)
    if not 1 <= k < n:
        raise ValueError(f"need 1 <= k < number of samples, got k={k}, N={n}")
    radii = []
    for i in range(0, n, batch_size):
        d = torch.cdist(features[i : i + batch_size], features)
        # index k of the sorted row: position 0 is the sample itself (distance 0)
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def in_manifold(
    queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, batch_size: int = 1024
) -> torch.Tensor:
    """Whether each query (Q, D) lies in some ball (support (S, D), radii (S,)) -> bool (Q,)."""
    inside = [
        (torch.cdist(queries[i : i + batch_size], support) <= radii[None]).any(dim=1)
        for i in range(0, len(queries), batch_size)
    ]
    return torch.cat(inside)


def _feature_pair(real_features, fake_features) -> tuple[torch.Tensor, torch.Tensor]:
    """Both feature sets as float tensors, checked to be (N, D) with the same D."""
    real, fake = _as_tensor(real_features), _as_tensor(fake_features)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {tuple(real.shape)}, {tuple(fake.shape)}")
    return real, fake


def precision_recall(
    real_features: np.ndarray | torch.Tensor,
    fake_features: np.ndarray | torch.Tensor,
    k: int = 3,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Improved precision and recall of fake (N_f, D) against real (N_r, D) features.

    Returns {"precision": float in [0, 1], "recall": float in [0, 1]}.
    """
    real, fake = _feature_pair(real_features, fake_features)
    precision = in_manifold(fake, real, knn_radii(real, k, batch_size), batch_size).double().mean()
    recall = in_manifold(real, fake, knn_radii(fake, k, batch_size), batch_size).double().mean()
    return {"precision": precision.item(), "recall": recall.item()}


def density_coverage(
    real_features: np.ndarray | torch.Tensor,
    fake_features: np.ndarray | torch.Tensor,
    k: int = 5,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020) of fake (M, D) against real (N, D) features.

    With B_i the open ball around real X_i of radius NND_k(X_i) (its k-th nearest real neighbour):
    density = 1/(kM) Σ_j Σ_i 1[Y_j ∈ B_i], coverage = 1/N Σ_i 1[∃ j: Y_j ∈ B_i].
    Returns {"density": float >= 0, "coverage": float in [0, 1]}.
    """
    real, fake = _feature_pair(real_features, fake_features)
    radii = knn_radii(real, k, batch_size)
    hits, covered = 0, torch.zeros(len(real), dtype=torch.bool)
    for i in range(0, len(fake), batch_size):
        inside = torch.cdist(fake[i : i + batch_size], real) < radii[None]  # strict, as the paper's code
        hits += int(inside.sum())
        covered |= inside.any(dim=0)
    return {"density": hits / (k * len(fake)), "coverage": covered.double().mean().item()}


def compute_precision_recall(
    real_images: torch.Tensor,
    fake_images: torch.Tensor,
    feature_extractor: FeatureExtractor | str | None = None,
    k: int = 3,
    batch_size: int = 256,
    inception_weights: str | os.PathLike | None = None,
) -> dict[str, float]:
    """Precision/recall of image sets (N, C, H, W) in [-1, 1] in a feature space (default: the
    digits classifier's penultimate features; see `fdistill.eval.fid.compute_fid`)."""
    real = extract_features(real_images, feature_extractor, batch_size, inception_weights)
    fake = extract_features(fake_images, feature_extractor, batch_size, inception_weights)
    return precision_recall(real, fake, k=k)
