"""FID / KID on image tensors, with clean-fid's statistics and an offline feature extractor.

Images are tensors in [-1, 1] of shape (B, C, H, W). A *feature extractor* maps such a batch to
(B, D) features. The default is the digits classifier's 128-d penultimate layer (no download,
works on any machine); a second shipped classifier of another architecture and seed gives an
independent space (`FEATURE_SPACES`: "classifier", "classifier_b"); `EXTERNAL_SPACES` adds two the
project did not design ("pixels", "sklearn_mlp"; see `fdistill.eval.external_features`). Inception-v3 is used only when
its TorchScript file is on disk, through clean-fid's own wrapper and "clean" resizer (uint8
quantisation, PIL bicubic to 299x299).

FID = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) on the feature Gaussians; KID is
clean-fid's unbiased cubic-polynomial-kernel MMD^2 averaged over random subsets.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

from fdistill.eval.external_features import EXTERNAL_SPACES, external_feature_extractor
from fdistill.models.classifier import (
    ASSET_NAME,
    ASSET_NAME_B,
    ClassifierBase,
    default_classifier_path,
    load_digits_classifier,
)

FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]
"""(B, C, H, W) images in [-1, 1] -> (B, D) features."""

INCEPTION_FILENAME = "inception-2015-12-05.pt"
INCEPTION_ENV = "FDISTILL_INCEPTION_WEIGHTS"

FEATURE_SPACES: dict[str, str] = {"classifier": ASSET_NAME, "classifier_b": ASSET_NAME_B}
"""Named digits feature spaces -> shipped weights in fdistill/assets: "classifier" (CNN, 128-d,
seed 0; the default) and "classifier_b" (residual GroupNorm/GELU CNN, 64-d, seed 1)."""

ALL_FEATURE_SPACES: tuple[str, ...] = (*FEATURE_SPACES, *EXTERNAL_SPACES)
"""Every named digits feature space: ours (`FEATURE_SPACES`), then the external ones (`EXTERNAL_SPACES`)."""


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)). As in clean-fid, a
    singular product is regularised by adding `eps` to both diagonals, and a numerically
    imaginary square root (|imag| <= 1e-3 on the diagonal) is replaced by its real part.

    Args:
        mu1, mu2: (D,) means; sigma1, sigma2: (D, D) covariances.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shape mismatch: means {mu1.shape} vs {mu2.shape}, "
                         f"covariances {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # With fewer samples than dimensions the product is singular by construction; a
        # non-finite root is regularised right here, so scipy's warning adds nothing.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in sqrt(sigma1 sigma2)")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), N >= 2, in float64."""
    feats = _as_numpy(features)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"features must be (N >= 2, D), got {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def fid_from_features(features_a: np.ndarray | torch.Tensor, features_b: np.ndarray | torch.Tensor) -> float:
    """FID between two feature sets (N_a, D) and (N_b, D)."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


def kid_from_features(
    features_a: np.ndarray | torch.Tensor,
    features_b: np.ndarray | torch.Tensor,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> float:
    """KID (clean-fid's `kernel_distance`) between (N_a, D) and (N_b, D), reproducible by `seed`."""
    from cleanfid.fid import kernel_distance

    a, b = _as_numpy(features_a), _as_numpy(features_b)
    if min(len(a), len(b), max_subset_size) < 2:
        raise ValueError("KID needs at least 2 samples per set")
    # clean-fid draws its subsets from numpy's global generator: seed it, then restore it.
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return kernel_distance(a, b, num_subsets=num_subsets, max_subset_size=max_subset_size)
    finally:
        np.random.set_state(state)


def to_classifier_input(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> (B, 1, image_size, image_size): grey by channel mean, bilinear resize."""
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    x = images.float()
    if x.shape[1] != 1:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                          antialias=True)
    return x


@lru_cache(maxsize=len(FEATURE_SPACES))
def _shipped_classifier(space: str) -> ClassifierBase:
    return load_digits_classifier(default_classifier_path(FEATURE_SPACES[space]))


def resolve_classifier(classifier: ClassifierBase | str | None = None) -> ClassifierBase:
    """`classifier`, or a shipped one by `FEATURE_SPACES` name (None: "classifier"), loaded once per
    process. Raises ValueError for an unknown name."""
    if classifier is None or isinstance(classifier, str):
        space = classifier or "classifier"
        if space not in FEATURE_SPACES:
            raise ValueError(f"unknown classifier feature space {space!r}: use one of {sorted(FEATURE_SPACES)}")
        return _shipped_classifier(space)
    return classifier


def classifier_feature_extractor(classifier: ClassifierBase | str | None = None) -> FeatureExtractor:
    """Penultimate features (B, feature_dim) of a digits classifier: a model, or a shipped one by
    `FEATURE_SPACES` name (default "classifier", 128-d; "classifier_b" is 64-d)."""
    model = resolve_classifier(classifier)

    @torch.no_grad()
    def extract(images: torch.Tensor) -> torch.Tensor:
        device = next(model.parameters()).device
        return model.features(to_classifier_input(images, model.config["image_size"]).to(device))

    return extract


def resolve_inception_path(weights: str | os.PathLike | None = None) -> Path:
    """Inception file: `weights` (file or folder), else $FDISTILL_INCEPTION_WEIGHTS, else clean-fid's
    download location /tmp/inception-2015-12-05.pt. Raises FileNotFoundError naming the path; never
    downloads."""
    if weights is None:
        weights = os.environ.get(INCEPTION_ENV) or Path("/tmp") / INCEPTION_FILENAME
    path = Path(weights)
    if path.is_dir():
        path = path / INCEPTION_FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights not found at {path}. fdistill never downloads them: place clean-fid's "
            f"TorchScript file {INCEPTION_FILENAME} there (or pass its path / set {INCEPTION_ENV}), "
            "or use the default digits-classifier features."
        )
    if path.name != INCEPTION_FILENAME:
        raise ValueError(f"clean-fid's Inception wrapper needs the name {INCEPTION_FILENAME}, got {path}")
    return path


def inception_feature_extractor(
    weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> FeatureExtractor:
    """clean-fid Inception-v3 pool features (B, 2048) from a local TorchScript file (see
    `resolve_inception_path`). Images are quantised to uint8, made RGB, and resized to 299x299 with
    clean-fid's "clean" resizer, exactly as clean-fid treats PNG files."""
    from cleanfid.inception_torchscript import InceptionV3W
    from cleanfid.resize import build_resizer

    path = resolve_inception_path(weights)
    model = InceptionV3W(str(path.parent), download=False, resize_inside=False).to(device).eval()
    resize = build_resizer("clean")

    @torch.no_grad()
    def extract(images: torch.Tensor) -> torch.Tensor:
        rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        uint8 = to_uint8(rgb).permute(0, 2, 3, 1).cpu().numpy()
        x = torch.from_numpy(np.stack([resize(im) for im in uint8])).permute(0, 3, 1, 2)
        return model(x.to(device))

    return extract


def get_feature_extractor(
    feature_extractor: FeatureExtractor | str | None = None,
    inception_weights: str | os.PathLike | None = None,
) -> FeatureExtractor:
    """Resolve None / a `FEATURE_SPACES` name ("classifier", the default, or "classifier_b"), an
    `EXTERNAL_SPACES` name ("pixels", "sklearn_mlp"), "inception" (local file only) or a callable."""
    if feature_extractor is None or feature_extractor in FEATURE_SPACES:
        return classifier_feature_extractor(feature_extractor)
    if feature_extractor in EXTERNAL_SPACES:
        return external_feature_extractor(feature_extractor)
    if feature_extractor == "inception":
        return inception_feature_extractor(inception_weights)
    if isinstance(feature_extractor, str):
        raise ValueError(f"unknown feature extractor {feature_extractor!r}: use one of "
                         f"{[*ALL_FEATURE_SPACES, 'inception']} or a callable")
    return feature_extractor


def extract_features(
    images: torch.Tensor,
    feature_extractor: FeatureExtractor | str | None = None,
    batch_size: int = 256,
    inception_weights: str | os.PathLike | None = None,
) -> np.ndarray:
    """Features (N, D) float64 of images (N, C, H, W) in [-1, 1], computed in batches."""
    extractor = get_feature_extractor(feature_extractor, inception_weights)
    chunks = [extractor(images[i : i + batch_size]).detach().double().cpu() for i in
              range(0, len(images), batch_size)]
    return torch.cat(chunks).reshape(len(images), -1).numpy()


def compute_fid(
    images_a: torch.Tensor,
    images_b: torch.Tensor,
    feature_extractor: FeatureExtractor | str | None = None,
    batch_size: int = 256,
    inception_weights: str | os.PathLike | None = None,
) -> float:
    """FID between two image sets (N_a, C, H, W) and (N_b, C, H, W) in [-1, 1].

    `feature_extractor`: None/"classifier" (digits classifier, default), "classifier_b" (the second
    digits classifier), "pixels" / "sklearn_mlp" (`EXTERNAL_SPACES`), "inception" (needs the local weights file, see `resolve_inception_path`) or
    any callable (B, C, H, W) -> (B, D).
    """
    extractor = get_feature_extractor(feature_extractor, inception_weights)
    return fid_from_features(extract_features(images_a, extractor, batch_size),
                             extract_features(images_b, extractor, batch_size))


def compute_kid(
    images_a: torch.Tensor,
    images_b: torch.Tensor,
    feature_extractor: FeatureExtractor | str | None = None,
    batch_size: int = 256,
    inception_weights: str | os.PathLike | None = None,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> float:
    """KID between two image sets in [-1, 1] (same extractor choices as `compute_fid`)."""
    extractor = get_feature_extractor(feature_extractor, inception_weights)
    return kid_from_features(extract_features(images_a, extractor, batch_size),
                             extract_features(images_b, extractor, batch_size),
                             num_subsets=num_subsets, max_subset_size=max_subset_size, seed=seed)


@torch.no_grad()
def class_coverage(
    images: torch.Tensor,
    classifier: ClassifierBase | None = None,
    labels: torch.Tensor | None = None,
    batch_size: int = 256,
) -> dict[str, object]:
    """Which classes a sample set contains, by the digits classifier's predictions.

    Args:
        images: (N, C, H, W) in [-1, 1]; labels: optional (N,) intended classes.
    Returns:
        {"histogram": list of N_c counts per class, "classes_covered": #classes with >= 1
        prediction, "accuracy": fraction predicted == labels (None without labels)}.
    """
    model = resolve_classifier(classifier)
    device = next(model.parameters()).device
    size, num_classes = model.config["image_size"], model.config["num_classes"]
    preds = torch.cat([
        model(to_classifier_input(images[i : i + batch_size], size).to(device)).argmax(dim=1).cpu()
        for i in range(0, len(images), batch_size)
    ])
    histogram = torch.bincount(preds, minlength=num_classes)
    accuracy = None if labels is None else (preds == labels.cpu()).float().mean().item()
    return {
        "histogram": histogram.tolist(),
        "classes_covered": int((histogram > 0).sum()),
        "accuracy": accuracy,
    }


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> [0, 255] uint8, rounding as an image file would store it."""
    return ((images.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _as_numpy(features: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    return np.asarray(features, dtype=np.float64)

