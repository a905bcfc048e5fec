"""One quality report for image generators: FID, KID, precision/recall and class coverage.

Reference set: the embedded digits (all 1,797) unless ``reference`` images are given. Features:
the digits classifier, or clean-fid's Inception when ``inception_weights`` names a local file; with
``feature_spaces`` also per named space (e.g. the independent "classifier_b") under ``by_features``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from .fid import class_coverage, extract_features, fid_from_features, kid_from_features
from .precision_recall import precision_recall

Sampler = Callable[[Tensor, torch.Generator], Tensor]
"""sampler(class_labels (B,), generator) → images (B, C, H, W) in [−1, 1]."""


def balanced_labels(n: int, num_classes: int = 10) -> Tensor:
    """0, 1, …, num_classes − 1, 0, 1, … (n labels)."""
    return torch.arange(n) % num_classes


@torch.no_grad()
def generate(sampler: Sampler, num_samples: int, batch_size: int, seed: int = 0,
             num_classes: int = 10) -> tuple[Tensor, Tensor, float]:
    """(images, labels, images per second) from ``sampler`` over balanced labels."""
    labels = balanced_labels(num_samples, num_classes)
    g = torch.Generator().manual_seed(seed)
    out, elapsed = [], 0.0
    for i in range(0, num_samples, batch_size):
        tic = time.perf_counter()
        out.append(sampler(labels[i:i + batch_size], g).float().cpu())
        elapsed += time.perf_counter() - tic
    return torch.cat(out), labels, num_samples / max(elapsed, 1e-9)


def image_metrics(images: Tensor, labels: Tensor | None = None, reference: Tensor | None = None,
                  inception_weights: str | None = None, feature_spaces: Sequence[str] = ()) -> dict:
    """FID/KID/precision/recall vs ``reference`` (default: all digits) and class coverage.

    Args:
        images: (N, C, H, W) in [−1, 1]; labels: optional (N,) intended classes.
        feature_spaces: names for :func:`~fdistill.eval.fid.get_feature_extractor`, e.g.
            ``("classifier", "classifier_b")``; each adds ``by_features[name] = {fid, kid,
            precision, recall}``. The top-level numbers stay those of the default space
            (Inception when ``inception_weights`` is given, else "classifier").
    """
    if reference is None:
        from fdistill.data.digits import load_digits_tensors

        reference = load_digits_tensors("all")[0]
    default = "inception" if inception_weights else "classifier"
    spaces = {name: _distances(images, reference, name, inception_weights)
              for name in dict.fromkeys([default, *feature_spaces])}
    report = {
        **spaces[default],
        "features": "inception" if inception_weights else "digits_classifier",
        "num_samples": int(images.shape[0]),
    }
    if feature_spaces:
        report["by_features"] = {name: spaces[name] for name in feature_spaces}
    if images.shape[1] == 1 and images.shape[-1] == 16:
        cov = class_coverage(images, labels=labels)
        report.update(classes_covered=cov["classes_covered"], class_accuracy=cov["accuracy"],
                      class_histogram=cov["histogram"])
    return report


def _distances(images: Tensor, reference: Tensor, space: str, inception_weights: str | None) -> dict[str, float]:
    """{fid, kid, precision, recall} of ``images`` against ``reference`` in feature space ``space``."""
    fa = extract_features(images, space, inception_weights=inception_weights)
    fr = extract_features(reference, space, inception_weights=inception_weights)
    pr = precision_recall(fr, fa)
    return {"fid": fid_from_features(fr, fa), "kid": kid_from_features(fr, fa),
            "precision": pr["precision"], "recall": pr["recall"]}


def pipeline_sampler(pipe) -> Sampler:
    """A :data:`Sampler` over an image pipeline (class labels, or unconditional batches), images in [−1, 1]."""
    pipe.set_progress_bar_config(disable=True)

    def sample(labels: Tensor, g: torch.Generator) -> Tensor:
        kw = {"class_labels": labels.tolist()} if pipe.takes_class_labels else {"batch_size": len(labels)}
        return pipe(generator=g, output_type="pt", **kw).images * 2 - 1

    return sample


def evaluate_pipeline(pipeline: str | Path, num_samples: int = 2000, batch_size: int = 250, seed: int = 0,
                      inception_weights: str | None = None, device: str = "cpu", num_classes: int = 10,
                      feature_spaces: Sequence[str] = ()) -> dict:
    """Sample a class-conditional or unconditional :class:`FDistillPipeline` and report its metrics.

    Labels cycle over 0 … ``num_classes`` − 1 (10 for digits; the teacher's extra "null" class
    embedding, used for classifier-free guidance, is not a class to sample). ``feature_spaces``: as
    in :func:`image_metrics`.
    """
    from fdistill.pipelines import FDistillPipeline

    path = Path(pipeline)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path} is not a pipeline folder (no model_index.json)")
    pipe = FDistillPipeline.from_pretrained(path).to(device)
    if pipe.conditioning == "text":
        raise ValueError("evaluate_pipeline scores class-conditional/unconditional pipelines; for a text "
                         "pipeline, sample your prompts and call fdistill.eval.pipeline_eval.image_metrics")
    images, labels, ips = generate(pipeline_sampler(pipe), num_samples, batch_size, seed, num_classes)
    report = image_metrics(images, labels if pipe.takes_class_labels else None, inception_weights=inception_weights,
                           feature_spaces=feature_spaces)
    report["images_per_second"] = ips
    return report
