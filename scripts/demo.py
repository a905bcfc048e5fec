"""The main job (``make demo``): distil a one-step JS student from the shipped digits teacher,
save it as a diffusers pipeline, write a sample grid and print its FID next to the teacher's in
both digits feature spaces ("classifier" and the independent "classifier_b": another architecture
and seed), with the ratio student / teacher in each.

    .venv/bin/python scripts/demo.py [--output outputs/demo] [key=value ...]   # config overrides

Uses configs/digits_js.yaml; resumes if interrupted (run it again). Teacher numbers come from the
shipped asset's record (measured by scripts/eval_teacher.py with the same metric code); a space the
record lacks is measured here by sampling the teacher as scripts/eval_teacher.py does (35 NFE per
image: minutes on a CPU; `scripts/eval_teacher.py digits --run <asset> --update-record` stores it).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from fdistill.eval.fid import FEATURE_SPACES
from fdistill.eval.pipeline_eval import generate, image_metrics, pipeline_sampler
from fdistill.pipelines import FDistillPipeline
from fdistill.teachers import DIGITS_TEACHER
from fdistill.training.checkpoint import read_metrics
from fdistill.training.config import load_config
from fdistill.training.distill import DistillConfig, distill

ROOT = Path(__file__).resolve().parents[1]
SPACES = tuple(FEATURE_SPACES)  # ("classifier", "classifier_b")


def teacher_record(num_samples: int | None) -> dict:
    """The shipped digits teacher's metrics, with `by_features` for every space in SPACES (measured
    now, as scripts/eval_teacher.py does, for a space the record lacks)."""
    teacher = json.loads(DIGITS_TEACHER.with_suffix(".json").read_text()).get("metrics", {})
    if all(name in teacher.get("by_features", {}) for name in SPACES):
        return teacher
    from eval_teacher import eval_digits  # scripts/ is on sys.path when this file runs as a script

    n = num_samples or int(teacher.get("num_samples", 2000))
    print(f"the teacher's record lacks {SPACES} numbers: sampling {n} teacher images (35 NFE each) ...")
    return eval_digits(DIGITS_TEACHER, n, steps=18, guidance=1.0, seed=int(teacher.get("seed", 0)))[0]


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
    ap.add_argument("--num-samples", type=int, default=None, help="FID samples (default: as the teacher's record)")
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
    teacher = teacher_record(args.num_samples)

    tic = time.perf_counter()
    cfg = load_config(DistillConfig, ROOT / "configs/digits_js.yaml", [*args.overrides, f"output_dir={out}"])
    distill(cfg, resume="latest")
    train_s = time.perf_counter() - tic

    n = args.num_samples or int(teacher.get("num_samples", 2000))
    sampler = pipeline_sampler(FDistillPipeline.from_pretrained(out / "pipeline"))
    images, labels, ips = generate(sampler, n, 250, seed=1234)
    m = image_metrics(images, labels, feature_spaces=SPACES)
    from torchvision.utils import save_image

    grid = images[:100].view(10, 10, 1, 16, 16).transpose(0, 1).reshape(100, 1, 16, 16)  # one row per class
    save_image((grid + 1) / 2, str(out / "samples.png"), nrow=10, padding=1)
    summary = {
        "student": {"divergence": cfg.objective.divergence, "nfe": 1, "fid": m["fid"], "precision": m["precision"],
                    "recall": m["recall"], "class_accuracy": m.get("class_accuracy"),
                    "images_per_second": ips, "train_seconds": train_s, "by_features": m["by_features"]},
        "teacher": {"nfe": teacher.get("nfe"), "fid": teacher.get("fid_classifier_features"),
                    "class_accuracy": teacher.get("class_accuracy"), "seed": teacher.get("seed"),
                    "by_features": {name: teacher["by_features"][name] for name in SPACES}},
        # FID scales differ between spaces; the ratio is what compares them (goal <= 1.3, paper < 1).
        "fid_ratio_student_over_teacher": {
            name: m["by_features"][name]["fid"] / teacher["by_features"][name]["fid"] for name in SPACES},
        "discriminator_last_quarter": discriminator_summary(out / "metrics.jsonl"),
        "num_samples": n, "sample_seed": 1234, "pipeline": str(out / "pipeline"), "grid": str(out / "samples.png"),
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=1) + "\n")
    s, t, ratio = summary["student"], summary["teacher"], summary["fid_ratio_student_over_teacher"]
    fids = lambda r: " | ".join(f"{r['by_features'][name]['fid']:.3g}" for name in SPACES)
    print(f"\nFID in {' | '.join(SPACES)} features")
    print(f"student ({s['divergence']}, 1 step): FID {fids(s)}  class acc {s['class_accuracy']:.3f}  "
          f"{s['images_per_second']:.0f} img/s  (trained in {train_s / 60:.1f} min)")
    print(f"teacher ({t['nfe']} NFE):        FID {fids(t)}  class acc {t['class_accuracy']:.3f}")
    print(f"student / teacher:            {' | '.join(f'{ratio[name]:.2f}x' for name in SPACES)}")
    d = summary["discriminator_last_quarter"]
    if d:
        print(f"discriminator, last quarter of f-distill (steps {d['from_step']}-{d['to_step']}): loss {d['disc']:.4f} "
              f"(chance: ln 4 = {d['ln4']:.4f})  h_spread {d['h_spread']:.3f} (goal >= 0.1)  r_mean {d['r_mean']:.3f}")
    print(f"pipeline: {out / 'pipeline'}   samples: {out / 'samples.png'}")


if __name__ == "__main__":
    main()
