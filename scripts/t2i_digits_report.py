"""Score the text-to-image digits teacher (stock StableDiffusion3Pipeline, 28 steps) and its one-step student.

    python scripts/t2i_digits_report.py --student outputs/t2i_digits/pipeline

Both run through stock diffusers (``DiffusionPipeline.from_pretrained`` + the stock call) on the prompts
"a handwritten zero" … "a handwritten nine", class-balanced; images are scored against all real digits in
both digits feature spaces (FID, KID, precision/recall) and by the digits classifier (accuracy of the
asked digit, per digit). The teacher is swept over ``--guidance`` at ``--sweep-samples`` images; the
sweep's best guidance of each space (lowest FID there) is then scored at ``--num-samples`` images, and
each space's teacher best is the lowest FID among those; the student is scored at ``--num-samples`` per
sample seed (``--student-seeds``), and its mean FID is divided by the teacher's best in each space. The per-image time of both
stock calls is measured in the same run, interleaved, at the same batch (median of ``--timing-repeats``).
Writes ``--output`` (JSON) and ``--grid`` (a PNG: one row per prompt, student then teacher).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from fdistill.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPACES = ("classifier", "classifier_b", "pixels", "sklearn_mlp")  # ours, then two we did not design


def load(folder: str | Path):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sampler(pipe, **call):
    """A sampler for :func:`fdistill.eval.pipeline_eval.generate`: labels → images in [−1, 1] via the stock call."""
    def sample(labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        prompts = [f"a handwritten {WORDS[int(y)]}" for y in labels]
        return pipe(prompts, generator=g, output_type="pt", **call).images.float() * 2 - 1

    return sample


def score(pipe, n: int, seed: int, batch: int, cache: Path | None = None, **call) -> dict:
    """Metrics of ``n`` samples of the stock call; read from / written to ``cache`` (a JSON file) when given,
    so that a second run of the report (with the student) does not sample the teacher again."""
    from fdistill.eval.pipeline_eval import generate, image_metrics
    from fdistill.io import atomic_write_text

    if cache is not None and cache.is_file():
        saved = json.loads(cache.read_text())
        if set(SPACES) <= set(saved["by_features"]):
            return saved
    images, labels, ips = generate(sampler(pipe, **call), n, batch, seed)
    report = image_metrics(images, labels, feature_spaces=SPACES)
    report.update(per_digit_accuracy=per_digit_accuracy(images, labels), images_per_second_generate=ips, call=call,
                  seed=seed)
    if cache is not None:
        atomic_write_text(cache, json.dumps(report, indent=1) + "\n")
    return report


@torch.no_grad()
def per_digit_accuracy(images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    from fdistill.eval.fid import resolve_classifier, to_classifier_input

    model = resolve_classifier(None)
    preds = torch.cat([model(to_classifier_input(part, model.config["image_size"])).argmax(1)
                       for part in images.split(256)])
    return {WORDS[d]: float((preds[labels == d] == d).float().mean()) for d in range(10)}


@torch.no_grad()
def vae_floor(pipe) -> dict:
    """The VAE's own reconstructions of all digits, scored like samples: the best FID a latent model can reach."""
    from fdistill.data.digits import load_digits_tensors
    from fdistill.eval.pipeline_eval import image_metrics

    x, labels = load_digits_tensors("all")
    rec = torch.cat([pipe.vae.decode(pipe.vae.encode(part).latent_dist.mode()).sample.clamp(-1, 1)
                     for part in x.split(256)])
    return {**image_metrics(rec, labels, feature_spaces=SPACES), "mse": float((rec - x).pow(2).mean())}


def time_calls(calls: dict[str, tuple], batch: int, repeats: int) -> dict[str, float]:
    """Median seconds per image of each (pipe, call kwargs), interleaved over ``repeats`` rounds."""
    prompts = [f"a handwritten {WORDS[i % 10]}" for i in range(batch)]
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for name, (pipe, call) in calls.items():
            tic = time.perf_counter()
            pipe(prompts, generator=torch.Generator().manual_seed(0), output_type="pt", **call)
            times[name].append((time.perf_counter() - tic) / batch)
    return {k: statistics.median(v) for k, v in times.items()}


def grid(student, teacher, teacher_call: dict, path: Path, per_row: int = 8) -> None:
    """One row per prompt: ``per_row`` student samples, a gap, ``per_row`` teacher samples."""
    import numpy as np
    from PIL import Image

    rows = []
    for d in range(10):
        prompts = [f"a handwritten {WORDS[d]}"] * per_row
        s = student(prompts, num_inference_steps=1, guidance_scale=0.0, generator=torch.Generator().manual_seed(d),
                    output_type="np").images
        t = teacher(prompts, generator=torch.Generator().manual_seed(d), output_type="np", **teacher_call).images
        gap = np.ones((s.shape[1], 4, s.shape[-1]))
        rows.append(np.concatenate([*s, gap, *t], axis=1))
    image = (np.concatenate(rows, axis=0)[..., 0] * 255).round().astype("uint8")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, mode="L").resize((image.shape[1] * 3, image.shape[0] * 3), Image.NEAREST).save(path)


def cache_file(args, name: str) -> Path | None:
    return None if not args.cache else Path(args.cache) / f"{name}.json"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=str(ROOT / "fdistill" / "assets" / "t2i_digits_teacher"))
    parser.add_argument("--student", default=None, help="the distilled StableDiffusion3Pipeline folder")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--teacher-steps", type=int, default=28)
    parser.add_argument("--sweep-samples", type=int, default=300)
    parser.add_argument("--num-samples", type=int, default=1000,
                        help="samples of the teacher's best guidance and of the student per seed (the teacher "
                             "costs about 1 s an image here: 56 MMDiT calls over 340 tokens)")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--timing-batch", type=int, default=50)
    parser.add_argument("--timing-repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="reports/t2i_digits.json")
    parser.add_argument("--grid", default="reports/t2i_digits_samples.png")
    parser.add_argument("--cache", default="outputs/t2i_digits_report", help="where the teacher's scores are kept")
    parser.add_argument("--student-seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="sample seeds of the student (one-step: cheap), reported as mean ± spread")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    teacher = load(args.teacher)
    report: dict = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                    "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "teacher_sweep": {}}
    report["vae_reconstruction"] = vae_floor(teacher)
    for g in args.guidance:
        tic = time.time()
        report["teacher_sweep"][str(g)] = score(
            teacher, args.sweep_samples, args.seed, args.batch_size,
            cache_file(args, f"teacher_w{g}_n{args.sweep_samples}_s{args.seed}_k{args.teacher_steps}"),
            num_inference_steps=args.teacher_steps, guidance_scale=g)
        r = report["teacher_sweep"][str(g)]
        print(f"teacher w={g}: FID " + " | ".join(f"{r['by_features'][sp]['fid']:.4g}" for sp in SPACES)
              + f"  acc {r['class_accuracy']:.3f} ({time.time() - tic:.0f} s)", flush=True)
    sweep_best = {space: min(args.guidance,
                             key=lambda g: report["teacher_sweep"][str(g)]["by_features"][space]["fid"])
                  for space in SPACES}
    report["teacher_sweep_best_guidance"] = sweep_best
    report["teacher_best"] = {}
    for g in sorted(set(sweep_best.values())):
        report["teacher_best"][str(g)] = score(
            teacher, args.num_samples, args.seed, args.batch_size,
            cache_file(args, f"teacher_w{g}_n{args.num_samples}_s{args.seed}_k{args.teacher_steps}"),
            num_inference_steps=args.teacher_steps, guidance_scale=g)
    # each space's best among the guidances scored at the full count (the sweep's small counts can mislead)
    best = {space: min(sorted(set(sweep_best.values())),
                       key=lambda g: report["teacher_best"][str(g)]["by_features"][space]["fid"]) for space in SPACES}
    report["teacher_best_guidance"] = best
    if args.student:
        student = load(args.student)
        call = json.loads((Path(args.student) / "fdistill.json").read_text())["stock_call"]
        per_seed = {str(seed): score(student, args.num_samples, seed, args.batch_size, **call)
                    for seed in args.student_seeds}
        first = per_seed.get(str(args.seed), next(iter(per_seed.values())))
        report["student"] = {**first, "per_seed": per_seed}
        from fdistill.eval.pipeline_eval import over_seeds

        fids = {space: [r["by_features"][space]["fid"] for r in per_seed.values()] for space in SPACES}
        report["student_fid_over_seeds"] = {space: over_seeds(v) for space, v in fids.items()}
        report["student_over_teacher_best"] = {
            space: report["student_fid_over_seeds"][space]["mean"]
            / report["teacher_best"][str(best[space])]["by_features"][space]["fid"] for space in SPACES}
        g = best["classifier"]
        timing = time_calls({"student": (student, call),
                             "teacher": (teacher, {"num_inference_steps": args.teacher_steps, "guidance_scale": g})},
                            args.timing_batch, args.timing_repeats)
        report["seconds_per_image"] = timing
        report["speedup"] = timing["teacher"] / timing["student"]
        grid(student, teacher, {"num_inference_steps": args.teacher_steps, "guidance_scale": g}, Path(args.grid))
        report["grid"] = args.grid
        acc = [r["class_accuracy"] for r in per_seed.values()]
        print(f"student (seeds {' '.join(per_seed)}): FID "
              + " | ".join(f"{report['student_fid_over_seeds'][sp]['mean']:.4g}" for sp in SPACES)
              + f"  acc {sum(acc) / len(acc):.3f}  / teacher best ({' | '.join(SPACES)}): "
              + " | ".join(f"{report['student_over_teacher_best'][sp]:.2f}x" for sp in SPACES)
              + f"  speed-up {report['speedup']:.1f}x")
    atomic_write_text(args.output, json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
