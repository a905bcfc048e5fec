"""The main job (``make demo``): distil a one-step JS student from the shipped digits teacher,
save it as a diffusers pipeline, write a sample grid and print its FID next to the teacher's in
four digits feature spaces, with the ratio student / teacher in each: our two digits classifiers
("classifier" and "classifier_b", another architecture and seed) and two the project did not design
("pixels", and "sklearn_mlp": a scikit-learn network fit on scikit-learn's own 8×8 digits).

    .venv/bin/python scripts/demo.py [--output outputs/demo] [key=value ...]   # config overrides

Uses configs/digits_js.yaml; resumes if interrupted (run it again). The scores are those of
`fdistill eval --pipeline outputs/demo/pipeline` (the same functions, the same defaults): 2,000 samples
at each of the sample seeds 0, 1, 2, every number the mean ± spread over them. The teacher's come from
the shipped asset's record (`metrics.reference`, written by `scripts/eval_teacher.py digits --run <asset>
--update-record` at the same counts); without a matching record the teacher is sampled here (35 NFE per
image: minutes on a CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from fdistill.eval.fid import ALL_FEATURE_SPACES
from fdistill.eval.pipeline_eval import evaluate_pipeline, fid_ratios, format_comparison, teacher_reference
from fdistill.pipelines import FDistillPipeline
from fdistill.teachers import DIGITS_TEACHER
from fdistill.training.checkpoint import read_metrics
from fdistill.training.config import load_config
from fdistill.training.distill import DistillConfig, distill

ROOT = Path(__file__).resolve().parents[1]
SPACES = ALL_FEATURE_SPACES  # ("classifier", "classifier_b", "pixels", "sklearn_mlp")
SEEDS = (0, 1, 2)  # sample seeds, as `fdistill eval` by default


def discriminator_summary(metrics_path: Path) -> dict:
    """Mean ``disc``, ``h_spread`` and ``r_mean`` over the last quarter of the f-distill phase's log rows.

    Issue 10's goals for the demo: ``disc`` clearly below ln 4 (the loss of a head at chance) and
    ``h_spread`` (std/mean of the normalised weights h over a batch) ≥ 0.1.
    """
    rows = [r for _, r in read_metrics(metrics_path) if r.get("phase") == "distill" and "disc" in r]
    if not rows:
        return {}
    tail = rows[len(rows) - max(1, len(rows) // 4):]
    mean = lambda key: sum(r[key] for r in tail if key in r) / max(1, sum(key in r for r in tail))
    return {"rows": len(tail), "from_step": tail[0]["step"], "to_step": tail[-1]["step"], "disc": mean("disc"),
            "ln4": math.log(4), "h_spread": mean("h_spread"), "r_mean": mean("r_mean"),
            "h_spread_goal": 0.1, "h_spread_goal_met": mean("h_spread") >= 0.1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default=str(ROOT / "outputs/demo"))
    ap.add_argument("--num-samples", type=int, default=2000, help="samples per sample seed (default 2000)")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="sample seeds (default 0 1 2)")
    ap.add_argument("--teacher-steps", type=int, default=18, help="the teacher's Heun steps (18 = 35 NFE)")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. objective.divergence=fkl steps=100")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: tiny models gain little from a second thread and lose a lot "
                         "when anything else runs; 0: torch's default)")
    args = ap.parse_intermixed_args()  # overrides may sit on either side of an option
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = Path(args.output)
    if not DIGITS_TEACHER.is_file():
        raise SystemExit(f"the shipped teacher {DIGITS_TEACHER} is missing: run scripts/train_teachers.sh digits")

    tic = time.perf_counter()
    cfg = load_config(DistillConfig, ROOT / "configs/digits_js.yaml", [*args.overrides, f"output_dir={out}"])
    distill(cfg, resume="latest")
    train_s = time.perf_counter() - tic

    pipe = FDistillPipeline.from_pretrained(out / "pipeline")
    student = evaluate_pipeline(pipe, num_samples=args.num_samples, seeds=args.seeds, feature_spaces=SPACES)
    teacher, source = teacher_reference(DIGITS_TEACHER, args.num_samples, args.seeds, SPACES, args.teacher_steps)
    from torchvision.utils import save_image

    grid = pipe(class_labels=[c for c in range(10) for _ in range(10)], output_type="pt",
                generator=torch.Generator().manual_seed(0)).images  # one row per class
    save_image(grid.view(10, 10, 1, 16, 16).transpose(0, 1).reshape(100, 1, 16, 16), str(out / "samples.png"),
               nrow=10, padding=1)
    summary = {
        "command": "make demo (scripts/demo.py); the same scores: fdistill eval --pipeline outputs/demo/pipeline",
        "student": {"divergence": cfg.objective.divergence, "nfe": 1, "train_seconds": train_s, **student},
        "teacher": {"nfe": 2 * args.teacher_steps - 1, "source": source, **teacher},
        # FID scales differ between spaces; the ratio is what compares them (goal <= 1.3, paper < 1).
        "fid_ratio_student_over_teacher": fid_ratios(student, teacher),
        "discriminator_last_quarter": discriminator_summary(out / "metrics.jsonl"),
        "pipeline": str(out / "pipeline"), "grid": str(out / "samples.png"),
    }
    summary = json.loads(json.dumps(summary).replace(str(ROOT) + "/", ""))  # paths inside the checkout
    (out / "demo.json").write_text(json.dumps(summary, indent=1) + "\n")
    print()
    print(format_comparison(student, teacher, f"student (1 step, {cfg.objective.divergence})",
                            f"teacher ({2 * args.teacher_steps - 1} NFE)"))
    print(f"  student: {student['images_per_second']:.0f} img/s, trained in {train_s / 60:.1f} min in this call; "
          f"teacher: {summary['teacher']['source']}")
    d = summary["discriminator_last_quarter"]
    if d:
        print(f"discriminator, last quarter of f-distill (steps {d['from_step']}-{d['to_step']}): loss {d['disc']:.4f} "
              f"(chance: ln 4 = {d['ln4']:.4f})  h_spread {d['h_spread']:.3f} (goal >= 0.1)  r_mean {d['r_mean']:.3f}")
    print(f"pipeline: {summary['pipeline']}   samples: {summary['grid']}")


if __name__ == "__main__":
    main()
