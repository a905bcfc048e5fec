"""The main job (``make demo``): distil a one-step JS student from the shipped digits teacher,
save it as a diffusers pipeline, write a sample grid and print its FID next to the teacher's.

    .venv/bin/python scripts/demo.py [--output outputs/demo] [key=value ...]   # config overrides

Uses configs/digits_js.yaml; resumes if interrupted (run it again). Teacher numbers come from the
shipped asset's record (measured by scripts/eval_teacher.py with the same metric code).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fdistill.eval.pipeline_eval import generate, image_metrics, pipeline_sampler
from fdistill.pipelines import FDistillPipeline
from fdistill.teachers import DIGITS_TEACHER
from fdistill.training.config import load_config
from fdistill.training.distill import DistillConfig, distill

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default=str(ROOT / "outputs/demo"))
    ap.add_argument("--num-samples", type=int, default=None, help="FID samples (default: as the teacher's record)")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. objective.divergence=fkl steps=100")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: tiny models gain little from a second thread and lose a lot "
                         "when anything else runs; 0: torch's default)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = Path(args.output)
    if not DIGITS_TEACHER.is_file():
        raise SystemExit(f"the shipped teacher {DIGITS_TEACHER} is missing: run scripts/train_teachers.sh digits")
    teacher = json.loads(DIGITS_TEACHER.with_suffix(".json").read_text()).get("metrics", {})

    tic = time.perf_counter()
    cfg = load_config(DistillConfig, ROOT / "configs/digits_js.yaml", [*args.overrides, f"output_dir={out}"])
    distill(cfg, resume="latest")
    train_s = time.perf_counter() - tic

    n = args.num_samples or int(teacher.get("num_samples", 2000))
    sampler = pipeline_sampler(FDistillPipeline.from_pretrained(out / "pipeline"))
    images, labels, ips = generate(sampler, n, 250, seed=1234)
    m = image_metrics(images, labels)
    from torchvision.utils import save_image

    grid = images[:100].view(10, 10, 1, 16, 16).transpose(0, 1).reshape(100, 1, 16, 16)  # one row per class
    save_image((grid + 1) / 2, str(out / "samples.png"), nrow=10, padding=1)
    summary = {
        "student": {"divergence": cfg.objective.divergence, "nfe": 1, "fid": m["fid"], "precision": m["precision"],
                    "recall": m["recall"], "class_accuracy": m.get("class_accuracy"),
                    "images_per_second": ips, "train_seconds": train_s},
        "teacher": {"nfe": teacher.get("nfe"), "fid": teacher.get("fid_classifier_features"),
                    "class_accuracy": teacher.get("class_accuracy")},
        "num_samples": n, "pipeline": str(out / "pipeline"), "grid": str(out / "samples.png"),
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=1) + "\n")
    s, t = summary["student"], summary["teacher"]
    print(f"\nstudent ({s['divergence']}, 1 step): FID {s['fid']:.2f}  class acc {s['class_accuracy']:.3f}  "
          f"{s['images_per_second']:.0f} img/s  (trained in {train_s / 60:.1f} min)")
    if t["fid"] is not None:
        print(f"teacher ({t['nfe']} NFE):        FID {t['fid']:.2f}  class acc {t['class_accuracy']:.3f}")
    print(f"pipeline: {out / 'pipeline'}   samples: {out / 'samples.png'}")


if __name__ == "__main__":
    main()
