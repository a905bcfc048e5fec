"""Baseline for the causal student: the shipped bidirectional teacher sampled causally, before distillation.

    python scripts/eval_hiar_teacher.py [--num-samples 100] [--output reports/hiar_teacher_baseline.json]

Rows, all on the same labels (one per class in turn) and 12-frame clips:

- ``bidirectional, N steps``: the teacher as trained (Euler, all frames attend to all frames).
- ``<order>, K = 4, F = 2``: the teacher's weights in ``CausalWanTransformer3DModel`` run by
  ``HiARPipeline`` in blocks of 2 frames with 4 steps (1000/750/500/250): what the HiAR student
  starts from, and what distillation has to fix.
- ``hierarchical, K = 4, one block``: the same 4 steps with the whole clip as one block (no
  causality), which separates the cost of few steps from the cost of block-causal attention.

Metrics from ``fdistill.eval``: per-frame digit accuracy (classifier on the digit crop), subject
consistency, temporal flickering, dynamic degree, drift of the classifier confidence.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fdistill.eval import moving_digits_report
from fdistill.pipelines import hiar_pipeline_from_teacher
from fdistill.teachers import load_moving_digits_teacher

STEPS = [1000, 750, 500, 250]


def _metrics(videos: torch.Tensor, labels: torch.Tensor, seconds: float) -> dict:
    return {**moving_digits_report(videos, labels), "seconds": round(seconds, 1)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, default=100)
    p.add_argument("--num-frames", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default="reports/hiar_teacher_baseline.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    labels = torch.arange(args.num_samples) % 10
    teacher = load_moving_digits_teacher()
    size = teacher.metadata["data"]["kwargs"]["size"]
    rows: dict[str, dict] = {}

    noise = torch.randn(args.num_samples, 1, args.num_frames, size, size,
                        generator=torch.Generator().manual_seed(args.seed))
    cond = teacher.label_embedding(labels)
    for steps in (4, 25):
        tic = time.perf_counter()
        with torch.no_grad():
            videos = teacher.sample(noise, steps, cond, clamp=1.0)
        rows[f"bidirectional, {steps} steps"] = _metrics(videos, labels, time.perf_counter() - tic)
        print(f"bidirectional {steps}: {rows[f'bidirectional, {steps} steps']}", flush=True)

    for name, order, fpb in [("sequential, K = 4, F = 2", "sequential", 2),
                             ("hierarchical, K = 4, F = 2", "hierarchical", 2),
                             ("hierarchical, K = 4, one block", "hierarchical", args.num_frames)]:
        pipe = hiar_pipeline_from_teacher(frames_per_block=fpb, denoising_steps=STEPS)
        pipe.set_progress_bar_config(disable=True)
        tic = time.perf_counter()
        videos = pipe(labels=labels, num_frames=args.num_frames, order=order, output_type="latent",
                      generator=torch.Generator().manual_seed(args.seed)).frames.clamp(-1, 1)
        rows[name] = _metrics(videos, labels, time.perf_counter() - tic)
        print(f"{name}: {rows[name]}", flush=True)

    report = {"command": "python scripts/eval_hiar_teacher.py", "num_samples": args.num_samples,
              "num_frames": args.num_frames, "teacher_parameters": teacher.metadata["parameters"],
              "denoising_steps": STEPS, "rows": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
