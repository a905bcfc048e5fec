"""Continuation on moving digits: does the student keep a real clip's digit and its direction of motion?

Real single-digit clips (test-split glyphs, unseen in training) of ``--prefix-frames`` frames are given to
``pipe(labels, video=clips)``, which writes them into every KV cache and generates ``--frames`` frames
after them. Measured for each order, with the clip's label and with the null label (the clip alone
carries the digit):

- ``accuracy``: per-frame accuracy of the clip's digit over the continued frames (the goal: >= 0.9);
- ``direction_cos``: cosine between the clip's last displacement (its last 3 frames) and the
  continuation's first (last clip frame -> 3rd new frame), mean over clips (real clips: ``real``);
- ``jump_px``: distance from the clip's last centroid to the first new frame's (real: one frame's move).

Baselines: the same clips' real continuation (the classifier's ceiling) and the student without a clip.
Writes ``reports/hiar_continuation.json``.

    python scripts/eval_continuation.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from fdistill.data.moving_digits import MovingDigits
from fdistill.eval.video import _centroids, frame_accuracy
from fdistill.io import atomic_write_text
from fdistill.pipelines.hiar_student import HIAR_STUDENT, load_hiar_student


def _motion(clips: torch.Tensor, videos: torch.Tensor) -> dict[str, float]:
    """Direction and jump of continuations videos (B, 1, F, H, W) after clips (B, 1, P, H, W), [-1, 1]."""
    r, c = _centroids(clips[:, 0, -3:])
    g_r, g_c = _centroids(videos[:, 0, :3])
    before = torch.stack([r[:, -1] - r[:, 0], c[:, -1] - c[:, 0]], -1)
    after = torch.stack([g_r[:, -1] - r[:, -1], g_c[:, -1] - c[:, -1]], -1)
    cos = (before * after).sum(-1) / (before.norm(dim=-1) * after.norm(dim=-1)).clamp_min(1e-6)
    jump = torch.stack([g_r[:, 0] - r[:, -1], g_c[:, 0] - c[:, -1]], -1).norm(dim=-1)
    return {"direction_cos": float(cos.mean()), "jump_px": float(jump.mean())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", default=str(HIAR_STUDENT), help="HiAR student .safetensors")
    parser.add_argument("--num-clips", type=int, default=32)
    parser.add_argument("--prefix-frames", type=int, default=12)
    parser.add_argument("--frames", type=int, default=24, help="continued frames")
    parser.add_argument("--orders", nargs="+", default=["hierarchical", "sequential"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="reports/hiar_continuation.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    pipe = load_hiar_student(args.student)
    pipe.set_progress_bar_config(disable=True)
    p, n = args.prefix_frames, args.frames
    data = MovingDigits(num_videos=args.num_clips, num_frames=p + n, size=pipe.config.height, max_digits=1,
                        seed=1000 + args.seed, split="test")
    videos, labels = data.tensors()  # (B, 1, P + N, H, W) in [-1, 1]
    clips, truth = videos[:, :, :p], videos[:, :, p:]
    given = (clips.transpose(1, 2) + 1) / 2  # (B, F, C, H, W) in [0, 1], as output_type="pt" gives

    report: dict = {
        "command": " ".join(["python", "scripts/eval_continuation.py", *(sys.argv[1:] if argv is None else argv)]),
        "student": Path(args.student).name, "num_clips": args.num_clips, "prefix_frames": p, "frames": n,
        "seed": args.seed, "goal": {"accuracy": 0.9},
        "real": {"accuracy": frame_accuracy(truth, labels, layout="latent"), **_motion(clips, truth)},
        "runs": {},
    }
    for order in args.orders:
        for condition in ("label", "null", "no_clip"):
            start = time.perf_counter()
            kwargs = dict(labels=None if condition == "null" else labels.tolist(), num_frames=n, order=order,
                          output_type="pt", generator=torch.Generator().manual_seed(args.seed))
            if condition == "null":
                kwargs["labels"] = [pipe.label_embedding.null_label] * len(labels)
            if condition != "no_clip":
                kwargs["video"] = given
            out = pipe(**kwargs).frames.transpose(1, 2) * 2 - 1  # (B, 1, N, H, W)
            row = {"accuracy": frame_accuracy(out, labels, layout="latent"), **_motion(clips, out),
                   "seconds": time.perf_counter() - start}
            report["runs"][f"{order}/{condition}"] = row
            print(order, condition, json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
