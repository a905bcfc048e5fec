"""Evaluate a trained teacher, write reports/<name>.json + a PNG, and optionally ship it as an asset.

    python scripts/eval_teacher.py digits --run runs/digits_teacher --export
    python scripts/eval_teacher.py moving_digits --run runs/moving_digits_teacher --export
    python scripts/eval_teacher.py digits --run fdistill/assets/digits_teacher.safetensors --update-record

digits: class-balanced samples from the EDM Heun sampler (``--steps 18`` = 35 NFE), class accuracy
by the digits classifier and FID/KID/precision/recall/density/coverage against all 1,797 digits in
every digits feature space ("classifier", and under ``by_features`` also the independent
"classifier_b" and the external "pixels" and "sklearn_mlp"; the held-out
split's FID against the same reference is reported as the data floor). ``--update-record`` scores a
shipped asset and merges the new numbers into its record (``<asset>.json`` ``metrics``, read by
``scripts/demo.py``), leaving its weights and training summary as they are.

moving_digits: class-balanced clips from the flow-matching Euler sampler; per-frame accuracy of
the classifier on a crop around the digit (the digit is 8x8 on a 16x16 canvas, so it is centred
and upsampled first), motion as mean |x_{f+1} − x_f| and as the speed of the brightness centroid
(px/frame), plus fdistill.eval.video's VBench-style metrics; every number also for real clips.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torchvision.utils import save_image

from fdistill.eval.fid import ALL_FEATURE_SPACES, class_coverage, compute_fid
from fdistill.eval.pipeline_eval import image_metrics
from fdistill.io import atomic_write_text
from fdistill.teachers import export_teacher_asset, load_teacher, sample_teacher

ROOT = Path(__file__).resolve().parents[1]


def _training_summary(run: Path) -> dict:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    wall, prev = 0.0, 0
    for rec in lines:
        wall += rec["sec_per_step"] * (rec["step"] - prev)
        prev = rec["step"]
    return {"steps": lines[-1]["step"], "final_loss": lines[-1]["loss"], "train_wall_s": round(wall, 1)}


def _balanced_labels(n: int, num_classes: int = 10) -> torch.Tensor:
    return torch.arange(n) % num_classes


def eval_digits(run: Path, num_samples: int, steps: int, guidance: float, seed: int,
                device: str = "cpu") -> tuple[dict, torch.Tensor]:
    from fdistill.data.digits import load_digits_tensors

    denoiser = load_teacher(run)
    labels = _balanced_labels(num_samples)
    tic = time.perf_counter()
    samples = sample_teacher(denoiser, labels, (1, 16, 16), steps, guidance, seed, 500, device)
    sample_s = time.perf_counter() - tic
    reference, _ = load_digits_tensors("all")
    test, test_labels = load_digits_tensors("test")
    m = image_metrics(samples, labels, reference, feature_spaces=ALL_FEATURE_SPACES)
    metrics = {
        "sampler": f"EDM Heun, {steps} steps", "nfe": denoiser.schedule.nfe(steps) * (1 if guidance == 1 else 2),
        "guidance_scale": guidance, "num_samples": num_samples, "seed": seed,
        "fid_classifier_features": m["fid"],
        "class_accuracy": m["class_accuracy"], "classes_covered": m["classes_covered"],
        "class_histogram": m["class_histogram"], "sample_wall_s": round(sample_s, 1),
        "by_features": m["by_features"],
        "data_floor": {"fid_test_split_vs_all": compute_fid(test, reference),
                       "fid_test_split_vs_all_by_features": {
                           name: compute_fid(test, reference, name) for name in ALL_FEATURE_SPACES},
                       "class_accuracy_test_split": class_coverage(test, labels=test_labels)["accuracy"]},
    }
    per_class = max(1, min(10, len(samples) // 10))  # labels cycle 0..9: one row per class
    grid = samples[: 10 * per_class].view(per_class, 10, 1, 16, 16).transpose(0, 1).reshape(-1, 1, 16, 16)
    return metrics, grid


def _video_metrics(videos: torch.Tensor, labels: torch.Tensor) -> dict:
    from fdistill.eval.video import moving_digits_report

    return moving_digits_report(videos, labels)


def eval_moving_digits(run: Path, num_samples: int, steps: int, guidance: float, seed: int, device: str = "cpu"):
    from fdistill.data.moving_digits import MovingDigits

    denoiser = load_teacher(run)
    meta = denoiser.metadata
    kwargs = dict(meta["data"]["kwargs"])
    frames = kwargs.get("num_frames", 12)
    size = kwargs.get("size", 16)
    labels = _balanced_labels(num_samples)
    tic = time.perf_counter()
    videos = sample_teacher(denoiser, labels, (1, frames, size, size), steps, guidance, seed, 50, device)
    sample_s = time.perf_counter() - tic
    real = MovingDigits(**{**kwargs, "num_videos": num_samples, "seed": 10_000 + seed})
    real_videos, real_labels = real.tensors()
    metrics = {
        "sampler": f"flow-matching Euler (DDIM), {steps} steps, shift {meta['schedule']['kwargs'].get('shift', 1.0)}",
        "nfe": steps * (1 if guidance == 1 else 2), "guidance_scale": guidance, "num_samples": num_samples,
        "sample_wall_s": round(sample_s, 1),
        "samples": _video_metrics(videos, labels),
        "real_data": _video_metrics(real_videos, real_labels),
    }
    strip = torch.cat([videos[:10], real_videos[:2]])  # rows: one clip per class 0..9, then 2 real clips
    strip = strip.permute(0, 2, 1, 3, 4).reshape(-1, 1, size, size)
    return metrics, strip, frames


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("teacher", choices=["digits", "moving_digits"])
    p.add_argument("--run", type=Path, required=True,
                   help="train_teacher output folder, or a shipped asset .safetensors (with --update-record)")
    p.add_argument("--num-samples", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="sampler steps (digits: Heun 18 = 35 NFE)")
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="where the teacher samples (metrics run on the CPU)")
    p.add_argument("--reports", type=Path, default=ROOT / "reports", help="where the JSON and PNG go")
    p.add_argument("--export", action="store_true", help="also write <assets>/<teacher>_teacher.*")
    p.add_argument("--assets", type=Path, default=ROOT / "fdistill" / "assets",
                   help="where --export writes (default: this checkout's fdistill/assets)")
    p.add_argument("--report-suffix", default="", help="appended to the report files' names, e.g. _cfg2")
    p.add_argument("--update-record", action="store_true",
                   help="--run is an asset: merge the new metrics into its .json record (weights untouched)")
    p.add_argument("--reference-seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="digits --update-record: the sample seeds of the record's reference (`fdistill eval`'s)")
    args = p.parse_args(argv)
    if args.update_record and (args.run.is_dir() or args.export):
        raise SystemExit("--update-record needs --run <asset .safetensors> and no --export")
    torch.set_num_threads(args.threads)

    name = f"{args.teacher}_teacher"
    out = f"{name}{args.report_suffix}"
    reports = args.reports
    reports.mkdir(parents=True, exist_ok=True)
    if args.teacher == "digits":
        metrics, grid = eval_digits(args.run, args.num_samples or 2000, args.steps or 18, args.guidance, args.seed,
                                    args.device)
        save_image((grid + 1) / 2, reports / f"{out}_samples.png", nrow=len(grid) // 10, padding=1)
    else:
        metrics, strip, frames = eval_moving_digits(args.run, args.num_samples or 200, args.steps or 25,
                                                    args.guidance, args.seed, args.device)
        save_image((strip + 1) / 2, reports / f"{out}_frames.png", nrow=frames, padding=1)
    parameters = load_teacher(args.run).metadata["parameters"]
    if args.update_record:
        if args.teacher == "digits":  # the reference `fdistill eval` and scripts/demo.py compare students with
            from fdistill.eval.pipeline_eval import evaluate_sampler, teacher_sampler

            steps = args.steps or 18
            sampler = teacher_sampler(load_teacher(args.run), (1, 16, 16), steps, args.guidance)
            metrics["reference"] = {**evaluate_sampler(sampler, args.num_samples or 2000, 250, args.reference_seeds,
                                                       feature_spaces=ALL_FEATURE_SPACES), "steps": steps}
        record_path = args.run.with_suffix(".json")
        record = json.loads(record_path.read_text())
        record["metrics"] = {**record.get("metrics", {}), **metrics}  # keeps the training summary
        atomic_write_text(record_path, json.dumps(record, indent=1) + "\n")
        report = {**record["metrics"], "parameters": parameters}
    else:
        report = {"teacher": name, "run": str(args.run), **_training_summary(args.run), **metrics,
                  "parameters": parameters, "config": (args.run / "config.yaml").read_text()}
    (reports / f"{out}.json").write_text(json.dumps(report, indent=1) + "\n")
    if args.export:
        keep = {k: v for k, v in report.items() if k != "config"}
        export_teacher_asset(args.run, args.assets / f"{name}.safetensors", metrics=keep)
    print(json.dumps({k: v for k, v in report.items() if k != "config"}, indent=1))


if __name__ == "__main__":
    main()
