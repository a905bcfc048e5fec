"""One quality report for image generators: FID, KID, precision/recall, density/coverage and class coverage.

Reference set: the embedded digits (all 1,797) unless ``reference`` images are given. Features:
the digits classifier, or clean-fid's Inception when ``inception_weights`` names a local file; with
``feature_spaces`` also per named space (e.g. the independent "classifier_b", or "pixels" and
"sklearn_mlp" from outside the project) under ``by_features``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from .fid import class_coverage, extract_features, fid_from_features, kid_from_features
from .precision_recall import density_coverage, precision_recall

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
                  inception_weights: str | None = None, feature_spaces: Sequence[str] = (), k: int = 3) -> dict:
    """FID/KID/precision/recall/density/coverage vs ``reference`` (default: all digits) and class coverage.

    Args:
        images: (N, C, H, W) in [−1, 1]; labels: optional (N,) intended classes.
        feature_spaces: names for :func:`~fdistill.eval.fid.get_feature_extractor`, e.g.
            ``("classifier", "classifier_b", "pixels", "sklearn_mlp")``; each adds
            ``by_features[name] = {fid, kid, precision, recall, density, coverage}``. The top-level
            numbers stay those of the default space (Inception when ``inception_weights`` is given,
            else "classifier").
        k: nearest neighbours of the precision/recall and density/coverage balls.
    """
    if reference is None:
        from fdistill.data.digits import load_digits_tensors

        reference = load_digits_tensors("all")[0]
    default = "inception" if inception_weights else "classifier"
    spaces = {name: _distances(images, reference, name, inception_weights, k)
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


def _distances(images: Tensor, reference: Tensor, space: str, inception_weights: str | None,
               k: int = 3) -> dict[str, float]:
    """{fid, kid, precision, recall, density, coverage} of ``images`` against ``reference`` in feature space ``space``."""
    fa = extract_features(images, space, inception_weights=inception_weights)
    fr = extract_features(reference, space, inception_weights=inception_weights)
    return {"fid": fid_from_features(fr, fa), "kid": kid_from_features(fr, fa), **precision_recall(fr, fa, k=k),
            **density_coverage(fr, fa, k=k)}


def pipeline_sampler(pipe) -> Sampler:
    """A :data:`Sampler` over an image pipeline (class labels, or unconditional batches), images in [−1, 1]."""
    pipe.set_progress_bar_config(disable=True)

    def sample(labels: Tensor, g: torch.Generator) -> Tensor:
        kw = {"class_labels": labels.tolist()} if pipe.takes_class_labels else {"batch_size": len(labels)}
        return pipe(generator=g, output_type="pt", **kw).images * 2 - 1

    return sample


SMALL_SAMPLE = 1000
"""Below this many samples per seed, FID is biased upward and the unbiased KID of close sets can be negative."""


def teacher_sampler(denoiser, shape: Sequence[int] = (1, 16, 16), steps: int = 18,
                    guidance_scale: float | None = None) -> Sampler:
    """A :data:`Sampler` over a label-conditioned fdistill teacher (``fdistill.teachers.load_teacher``) of
    samples ``shape``: ``steps`` reference steps (EDM Heun: 2·steps − 1 network calls) from noise drawn with
    the generator."""

    def sample(labels: Tensor, g: torch.Generator) -> Tensor:
        noise = torch.randn(len(labels), *shape, generator=g)
        return denoiser.sample(noise, steps, labels, guidance_scale, clamp=1.0)

    return sample


def evaluate_sampler(sampler: Sampler, num_samples: int = 2000, batch_size: int = 250, seeds: Sequence[int] = (0, 1, 2),
                     num_classes: int = 10, conditional: bool = True, feature_spaces: Sequence[str] = ("classifier",),
                     inception_weights: str | None = None, k: int = 5, progress: bool = True) -> dict:
    """Score ``sampler`` at each sample seed; every metric as its mean and spread (max − min) over the seeds.

    Returns ``{"seeds", "num_samples", "by_features": {space: {metric: {"mean", "spread", "per_seed"}}},
    "class_accuracy": {...}, "images_per_second", "warnings"}``: ``num_samples`` class-balanced samples per
    seed (labels 0 … ``num_classes`` − 1 cycling; ignored when not ``conditional``), scored against all 1,797
    digits (or Inception features when ``inception_weights`` is given, as :func:`image_metrics`).
    """
    from tqdm.auto import tqdm

    if not seeds:
        raise ValueError("seeds must name at least one sample seed")
    spaces = list(dict.fromkeys(feature_spaces)) or ["classifier"]
    per_seed, speeds = {}, []
    for seed in tqdm(list(seeds), desc="sample seeds", disable=not progress or len(seeds) < 2):
        images, labels, ips = generate(sampler, num_samples, batch_size, seed, num_classes)
        per_seed[seed] = image_metrics(images, labels if conditional else None, inception_weights=inception_weights,
                                       feature_spaces=spaces, k=k)
        speeds.append(ips)
    by_features = {space: {metric: over_seeds([per_seed[s]["by_features"][space][metric] for s in seeds])
                           for metric in per_seed[seeds[0]]["by_features"][space]} for space in spaces}
    report = {"seeds": list(seeds), "num_samples": num_samples, "k": k, "by_features": by_features,
              "images_per_second": sorted(speeds)[len(speeds) // 2]}
    if "class_accuracy" in per_seed[seeds[0]]:
        report["class_accuracy"] = over_seeds([per_seed[s]["class_accuracy"] for s in seeds])
        report["classes_covered"] = min(per_seed[s]["classes_covered"] for s in seeds)
    report["warnings"] = sample_warnings(report)
    return report


def over_seeds(values: Sequence[float]) -> dict:
    """One metric over sample seeds: ``{"mean", "spread" (max − min), "per_seed"}``."""
    values = list(values)
    return {"mean": sum(values) / len(values), "spread": max(values) - min(values), "per_seed": values}


def fid_ratios(student: dict, teacher: dict) -> dict[str, float]:
    """Mean FID of ``student`` over the teacher's, per feature space both reports (:func:`evaluate_sampler`) hold."""
    return {space: m["fid"]["mean"] / teacher["by_features"][space]["fid"]["mean"]
            for space, m in student["by_features"].items() if space in teacher["by_features"]}


def sample_warnings(report: dict) -> list[str]:
    """What a reader of ``report`` (from :func:`evaluate_sampler`) should know before comparing its numbers."""
    out = []
    n = report["num_samples"]
    if n < SMALL_SAMPLE:
        out.append(f"{n} samples per seed is too few for FID and KID (use >= {SMALL_SAMPLE}; 2000 as the README): "
                   "FID is biased upward and changes with the count, so compare models only at the same count")
    negative = [space for space, m in report["by_features"].items() if m["kid"]["mean"] < 0]
    if negative:
        out.append(f"KID is negative in {', '.join(negative)}: the unbiased estimate of a distance near 0 is "
                   "negative about half the time; read it as 'indistinguishable at this sample count'")
    if len(report["seeds"]) < 2:
        out.append("one sample seed: no spread to tell a difference from noise (FID moves by ~0.1-0.2 between "
                   "seeds at 2000 digits samples); pass --seeds 0 1 2")
    return out


def format_comparison(student: dict, teacher: dict | None = None, name: str = "student",
                      teacher_name: str = "teacher") -> str:
    """A table of FID mean ± spread per feature space (and the ratio to ``teacher`` when given)."""
    seeds = " ".join(map(str, student["seeds"]))
    cell = lambda m: f"{m['mean']:.4g} ± {m['spread']:.2g}"
    rows = [[space, cell(m["fid"])] + ([cell(teacher["by_features"][space]["fid"]),
                                         f"{m['fid']['mean'] / teacher['by_features'][space]['fid']['mean']:.2f}x"]
                                        if teacher and space in teacher["by_features"] else [])
            for space, m in student["by_features"].items()]
    head = ["space", name] + ([teacher_name, "ratio"] if teacher else [])
    widths = [max(len(r[i]) for r in [head, *rows] if i < len(r)) for i in range(len(head))]
    line = lambda r: "  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                                      for i, (v, w) in enumerate(zip(r, widths[:len(r)], strict=True)))
    lines = [f"FID, mean ± spread (max − min) over sample seeds {seeds}, {student['num_samples']} samples each:",
             line(head), *map(line, rows)]
    for who, rep in ((name, student), (teacher_name, teacher)):
        if rep and "class_accuracy" in rep:
            acc = rep["class_accuracy"]
            lines.append(f"  class accuracy, {who}: {acc['mean']:.3f} ± {acc['spread']:.3f}")
    return "\n".join(lines)


def evaluate_pipeline(pipe, num_samples: int = 2000, batch_size: int = 250, seeds: Sequence[int] = (0, 1, 2),
                      inception_weights: str | None = None, num_classes: int = 10,
                      feature_spaces: Sequence[str] = ("classifier",), progress: bool = True) -> dict:
    """:func:`evaluate_sampler` over a loaded class-conditional or unconditional image pipeline (an
    ``FDistillPipeline``: ``fdistill eval`` loads it). Labels cycle over 0 … ``num_classes`` − 1 (10 for
    digits; the teacher's extra "null" class embedding, used for classifier-free guidance, is not a class
    to sample). A text-to-image student runs in its teacher's own pipeline class: sample it with your prompts
    and call :func:`image_metrics`."""
    return evaluate_sampler(pipeline_sampler(pipe), num_samples, batch_size, seeds, num_classes,
                            pipe.takes_class_labels, feature_spaces, inception_weights, progress=progress)


def teacher_reference(path: str | Path, num_samples: int, seeds: Sequence[int], feature_spaces: Sequence[str],
                      steps: int = 18, batch_size: int = 250, num_classes: int = 10, k: int = 5,
                      progress: bool = True) -> tuple[dict, str]:
    """The teacher's :func:`evaluate_sampler` report at the same counts, and where it came from.

    A teacher asset's record (``<asset>.json`` → ``metrics.reference``, written by ``scripts/eval_teacher.py
    --update-record``) is used when it was made with these sample count, seeds, steps and k and covers every
    space; otherwise the teacher is sampled now (35 network calls per image at 18 steps: minutes on a CPU).
    """
    import json

    from fdistill.teachers import load_teacher

    path = Path(path)
    record = path.with_suffix(".json")
    if record.is_file():
        ref = json.loads(record.read_text()).get("metrics", {}).get("reference")
        if (ref and ref["num_samples"] == num_samples and ref["seeds"] == list(seeds) and ref.get("steps") == steps
                and ref.get("k") == k and set(feature_spaces) <= set(ref["by_features"])):
            ref = {**ref, "by_features": {s: ref["by_features"][s] for s in feature_spaces}}
            return ref, f"{record} (recorded)"
    denoiser = load_teacher(path)
    cfg = denoiser.metadata["model_config"]
    if denoiser.label_embedding is not None or not isinstance(cfg.get("sample_size"), int):
        raise ValueError(f"{path} is not a class-conditional image teacher (model {denoiser.metadata['model_class']})")
    shape = (cfg["in_channels"], cfg["sample_size"], cfg["sample_size"])
    report = evaluate_sampler(teacher_sampler(denoiser, shape, steps), num_samples, batch_size, seeds, num_classes,
                              True, feature_spaces, k=k, progress=progress)
    return {**report, "steps": steps}, f"{path} (sampled now, {steps} steps)"
