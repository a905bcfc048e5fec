"""Mode recovery on digits: does distribution matching bring back classes the warm start lost?

    .venv/bin/python scripts/digits_mode_recovery.py [--drop-classes 3 8] [--drop-mode replace|remove]
        [--divergences reverse_kl ...] [--seeds 0 1 2] [--steps 300] [--eval-every 50] [--num-samples 1000]
        [key=value ...]

Per seed: an *unconditional* one-step student (``data.unconditional=true``: the teacher's null label
everywhere) is warm-started on the teacher's unconditional ODE pairs without ``--drop-classes``
(``warmup.drop_classes``, read by the digits classifier), then distilled toward the full unconditional
teacher with each divergence, from that same warm start. ``--drop-mode remove`` leaves those pairs out
(the student then still draws the classes from the noise it never saw: it generalises the teacher's
map); ``replace`` (the default) keeps every noise and swaps each such target for the class-conditional
teacher's sample of the best-ranked kept class from the same noise, so no noise leads to them. Every
``--eval-every`` generator steps the student samples ``--num-samples`` images and the classifier says
which share of them are the dropped classes (the data has 10% per class, so 20% for two; the
teacher's own unconditional share is measured too). Training runs in segments that resume bit-exactly,
so the curve is that of one uninterrupted run. Resumable: run the same command again after a stop.

Writes reports/digits_mode_recovery_<drop-mode>.json (every curve, mean ± std over seeds, the class
histogram of the warm-start targets) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from fdistill.divergences import get_divergence
from fdistill.io import atomic_write_text
from fdistill.models.classifier import load_digits_classifier
from fdistill.pipelines import FDistillPipeline
from fdistill.teachers import load_digits_teacher
from fdistill.training.checkpoint import latest_checkpoint
from fdistill.training.config import load_config, parse_args_with_overrides
from fdistill.training.distill import ODE_PAIRS_FILE, DistillConfig, distill

ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def dropped_share(images: torch.Tensor, drop: list[int]) -> tuple[float, list[int]]:
    """Share of images (N, 1, 16, 16) in [−1, 1] the digits classifier reads as ``drop``, and the class histogram."""
    preds = load_digits_classifier()(images.clamp(-1, 1)).argmax(1)
    return float(torch.isin(preds, torch.tensor(drop)).float().mean()), torch.bincount(preds, minlength=10).tolist()


@torch.no_grad()
def student_images(pipeline: Path, n: int, seed: int) -> torch.Tensor:
    """n unconditional samples (null label) of an exported student, in [−1, 1]."""
    pipe = FDistillPipeline.from_pretrained(pipeline)
    pipe.set_progress_bar_config(disable=True)
    null = pipe.num_classes - 1  # the teacher's extra "no class" embedding
    g = torch.Generator().manual_seed(seed)
    return pipe(class_labels=[null] * n, generator=g, output_type="pt").images * 2 - 1


@torch.no_grad()
def teacher_images(n: int, steps: int, seed: int) -> torch.Tensor:
    den = load_digits_teacher()
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, 16, 16, generator=g)
    labels = torch.full((n,), den.num_classes)
    return den.sample(z, steps, labels, clamp=1.0)


def summarize(curves: list[list[dict]]) -> list[dict]:
    """Mean ± std of the dropped share over seeds, per evaluated step."""
    out = []
    for points in zip(*curves, strict=True):
        t = torch.tensor([p["dropped_share"] for p in points], dtype=torch.float64)
        out.append({"step": points[0]["step"], "mean": float(t.mean()), "std": float(t.std()) if len(t) > 1 else 0.0})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drop-classes", type=int, nargs="+", default=[3, 8])
    ap.add_argument("--drop-mode", choices=["replace", "remove"], default="replace",
                    help="how the warm-start pairs lose the classes (warmup.drop_mode)")
    ap.add_argument("--divergences", nargs="+", default=["reverse_kl", "jensen_shannon", "forward_kl", "alpha:1.5"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300, help="f-distill generator steps after the warm start")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--num-samples", type=int, default=1000)
    ap.add_argument("--teacher-steps", type=int, default=18, help="Heun steps of the teacher's reference samples")
    ap.add_argument("--config", default=str(ROOT / "configs/digits_js.yaml"))
    ap.add_argument("--work", default=None, help="default: outputs/digits_mode_recovery_<drop-mode>")
    ap.add_argument("--report", default=None, help="default: reports/digits_mode_recovery_<drop-mode>.json")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. critic_steps=1")
    args = parse_args_with_overrides(ap)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.steps < 1 or args.eval_every < 1:
        raise SystemExit(f"--steps and --eval-every must be >= 1, got {args.steps}, {args.eval_every}")
    args.work = args.work or str(ROOT / f"outputs/digits_mode_recovery_{args.drop_mode}")
    args.report = args.report or str(ROOT / f"reports/digits_mode_recovery_{args.drop_mode}.json")
    work, drop = Path(args.work), sorted(set(args.drop_classes))
    common = [*args.overrides, "data.unconditional=true", f"warmup.drop_classes=[{','.join(map(str, drop))}]",
              f"warmup.drop_mode={args.drop_mode}"]
    base = load_config(DistillConfig, args.config, common)  # bad values stop here, before any work
    for div in args.divergences:
        get_divergence(div)  # names the valid ones before any work
    marks = list(range(args.eval_every, args.steps, args.eval_every)) + [args.steps]
    share, hist = dropped_share(teacher_images(args.num_samples, args.teacher_steps, 1234), drop)
    report: dict = {"drop_classes": drop, "drop_mode": args.drop_mode, "data_share": len(drop) / 10,
                    "teacher_share": share, "warm_start": {},
                    "teacher_histogram": hist, "config": args.config, "overrides": args.overrides,
                    "steps": args.steps, "num_samples": args.num_samples, "seeds": args.seeds, "runs": {},
                    "command": " ".join(["python", "scripts/digits_mode_recovery.py", *sys.argv[1:]])}
    print(f"teacher (unconditional, {args.teacher_steps} Heun steps): dropped share {share:.3f}", flush=True)
    for seed in args.seeds:
        warm = work / f"seed{seed}" / "warmup"
        distill(load_config(DistillConfig, args.config, [*common, f"seed={seed}", "steps=0", "critic_warmup_steps=0",
                                                          f"checkpoint_every={base.warmup.steps}", f"output_dir={warm}"]),
                resume="latest")
        start_share, start_hist = dropped_share(student_images(warm / "pipeline", args.num_samples, 1234), drop)
        pairs = load_file(str(warm / ODE_PAIRS_FILE))["x"]
        report["warm_start"][str(seed)] = {"pairs_histogram": dropped_share(pairs, drop)[1],
                                           "dropped_share": start_share, "histogram": start_hist}
        print(f"seed {seed} warm start: targets by class {report['warm_start'][str(seed)]['pairs_histogram']}, "
              f"dropped share of its samples {start_share:.3f}", flush=True)
        ckpt = latest_checkpoint(warm)
        for div in args.divergences:
            run = work / f"seed{seed}" / div.replace(":", "_")
            if latest_checkpoint(run) is None:  # every divergence starts from the same warm start
                run.mkdir(parents=True, exist_ok=True)
                shutil.copytree(ckpt, run / ckpt.name, dirs_exist_ok=True)
            curve = [{"step": 0, "dropped_share": start_share, "histogram": start_hist}]
            tic = time.perf_counter()
            for mark in marks:
                cfg = load_config(DistillConfig, args.config, [*common, f"seed={seed}", f"objective.divergence={div}",
                                                               f"steps={mark}", f"output_dir={run}"])
                distill(cfg, resume="latest")
                s, h = dropped_share(student_images(run / "pipeline", args.num_samples, 1234), drop)
                curve.append({"step": mark, "dropped_share": s, "histogram": h})
                print(f"seed {seed} {div} step {mark}: dropped share {s:.3f}", flush=True)
            report["runs"].setdefault(div, {})[str(seed)] = {"curve": curve,
                                                             "seconds": round(time.perf_counter() - tic, 1)}
            write(report, args)
    for div, runs in report["runs"].items():
        report["runs"][div]["summary"] = summarize([r["curve"] for k, r in runs.items() if k != "summary"])
    write(report, args)
    print(f"\n| divergence | dropped share at step 0 | at step {args.steps} (mean ± std over seeds) |")
    print("|---|---|---|")
    for div, runs in report["runs"].items():
        first, last = runs["summary"][0], runs["summary"][-1]
        print(f"| {div} | {first['mean']:.3f} ± {first['std']:.3f} | {last['mean']:.3f} ± {last['std']:.3f} |")


def write(report: dict, args: argparse.Namespace) -> None:
    path = Path(args.report)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
