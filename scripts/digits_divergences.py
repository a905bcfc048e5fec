"""Teacher vs one-step students on digits: FID, precision, recall, class coverage, speed.

    .venv/bin/python scripts/digits_divergences.py [--divergences reverse_kl jensen_shannon forward_kl]
        [--steps 200] [--num-samples 2000] [--config configs/digits_js.yaml] [key=value ...]

The ODE-pair warm-up is shared: it runs once (``outputs/digits_study/warmup``), and every divergence
resumes from its last checkpoint, which is exactly what an uninterrupted run would compute (resume is
bit-exact). The warm-up-only student is reported as the regression baseline that f-distill must beat.
Writes reports/digits.json and reports/digits_<model>.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from fdistill.eval.pipeline_eval import generate, image_metrics, pipeline_sampler
from fdistill.pipelines import FDistillPipeline
from fdistill.teachers import load_digits_teacher
from fdistill.training.checkpoint import latest_checkpoint
from fdistill.training.config import load_config
from fdistill.training.distill import DistillConfig, distill

ROOT = Path(__file__).resolve().parents[1]


def save_grid(images: torch.Tensor, path: Path, nrow: int = 10) -> None:
    from torchvision.utils import save_image

    save_image((images[:100] + 1) / 2, str(path), nrow=nrow, padding=1)


def student_sampler(pipeline_dir: Path):
    return pipeline_sampler(FDistillPipeline.from_pretrained(pipeline_dir))


def teacher_sampler(steps: int):
    den = load_digits_teacher()

    def sample(labels, g):
        z = torch.randn(len(labels), 1, 16, 16, generator=g)
        return den.schedule.sample(lambda x, t: den(x, t, labels), z, steps).clamp(-1, 1)

    return sample, den.schedule.nfe(steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--divergences", nargs="+", default=["reverse_kl", "jensen_shannon", "forward_kl"])
    ap.add_argument("--config", default=str(ROOT / "configs/digits_js.yaml"))
    ap.add_argument("--steps", type=int, default=None, help="f-distill iterations (default: the config's)")
    ap.add_argument("--num-samples", type=int, default=2000)
    ap.add_argument("--teacher-steps", type=int, default=18, help="Heun steps of the teacher (NFE = 2N-1)")
    ap.add_argument("--work", default=str(ROOT / "outputs/digits_study"))
    ap.add_argument("--report", default=str(ROOT / "reports/digits.json"))
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    work, reports = Path(args.work), Path(args.report).parent
    reports.mkdir(parents=True, exist_ok=True)
    base = load_config(DistillConfig, args.config, args.overrides)
    steps = base.steps if args.steps is None else args.steps
    results: dict[str, dict] = {}

    def evaluate(name: str, sampler, extra: dict) -> None:
        images, labels, ips = generate(sampler, args.num_samples, 250, seed=1234)
        m = image_metrics(images, labels)
        m.pop("class_histogram", None)
        results[name] = {**m, "images_per_second": ips, **extra}
        save_grid(images, reports / f"digits_{name}.png")
        print(name, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in results[name].items()}),
              flush=True)

    sampler, nfe = teacher_sampler(args.teacher_steps)
    evaluate("teacher", sampler, {"nfe": nfe})

    # phase 1 once: the ODE-pair regression baseline
    warm = work / "warmup"
    tic = time.perf_counter()
    wcfg = load_config(DistillConfig, args.config, [*args.overrides, "steps=0", f"output_dir={warm}",
                                                      f"checkpoint_every={base.warmup.steps}"])
    distill(wcfg, resume="latest")
    evaluate("ode_regression", student_sampler(warm / "pipeline"),
             {"nfe": 1, "train_seconds": time.perf_counter() - tic})
    ckpt = latest_checkpoint(warm)

    for div in args.divergences:
        run = work / div.replace(":", "_")
        if latest_checkpoint(run) is None:  # start from the shared warm-up checkpoint
            run.mkdir(parents=True, exist_ok=True)
            shutil.copytree(ckpt, run / ckpt.name, dirs_exist_ok=True)
        tic = time.perf_counter()
        cfg = load_config(DistillConfig, args.config, [*args.overrides, f"objective.divergence={div}",
                                                        f"steps={steps}", f"output_dir={run}"])
        distill(cfg, resume="latest")
        evaluate(div, student_sampler(run / "pipeline"),
                 {"nfe": 1, "distill_steps": steps, "train_seconds": time.perf_counter() - tic})

    teacher_ips = results["teacher"]["images_per_second"]
    for r in results.values():
        r["speedup_vs_teacher"] = r["images_per_second"] / teacher_ips
        r["fid_vs_teacher"] = r["fid"] / results["teacher"]["fid"]
    report = {"config": args.config, "overrides": args.overrides, "num_samples": args.num_samples,
              "teacher_steps": args.teacher_steps, "results": results,
              "command": " ".join(["python", "scripts/digits_divergences.py", *sys.argv[1:]])}
    Path(args.report).write_text(json.dumps(report, indent=1) + "\n")
    print("\n| model | NFE | FID | precision | recall | classes | class acc. | img/s | speed-up | FID/teacher |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['nfe']} | {r['fid']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | "
              f"{r.get('classes_covered', '-')} | {r.get('class_accuracy', 0):.3f} | {r['images_per_second']:.0f} | "
              f"{r['speedup_vs_teacher']:.1f}× | {r['fid_vs_teacher']:.2f} |")


if __name__ == "__main__":
    main()
