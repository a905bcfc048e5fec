"""Report on HiAR students: digit accuracy, drift, motion and cost at the training length and 8x it.

    python scripts/eval_hiar_student.py --student NAME=PATH [--student ...] [--bidirectional-teacher]
        [--seeds 2] [--frames 12 96] [--classes 10] [--output reports/hiar_student.json]

Rows, all on the same labels (classes 0..C-1, one video per class and seed; seed s seeds the noise):

- ``NAME``: each ``--student`` asset, loaded with ``load_hiar_student`` and run with its saved
  defaults (steps, frames per block, order).
- ``causal teacher (baseline)``: the undistilled teacher in ``HiARPipeline``
  (``hiar_pipeline_from_teacher``: 4 steps 1000/750/500/250, blocks of 2, hierarchical, window 8).
- ``bidirectional teacher`` (``--bidirectional-teacher``): the teacher as trained, 25 Euler steps
  over its training clip only (it is not causal: every frame attends to every frame).
- ``real clips``: the teacher's training data (``fdistill.data.moving_digits``) at each length, the
  reference for motion and the classifier's own ceiling.

Videos longer than the model's training clip use a rolling attention window: the model's own
``window``, or ``--window`` (8 latent frames) when it has none. Per length: per-frame digit accuracy
(classifier on a crop around the digit), accuracy of the first vs the last ``--edge`` frames (drift =
first - last), brightness-centroid speed and its ratio to real clips (motion; a video slower than
half the real speed counts as frozen), temporal flickering, subject consistency, and CPU / wall time
per generated frame (one torch thread). The goals of issue 11 are checked per row at the longest
length. Writes the JSON, a PNG strip (one row per class, per model) and a GIF (a few classes side by side).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from fdistill.data.moving_digits import MovingDigits
from fdistill.eval import moving_digits_report
from fdistill.pipelines import hiar_pipeline_from_teacher, load_hiar_student
from fdistill.pipelines.hiar_student import read_hiar_student
from fdistill.teachers import load_moving_digits_teacher, sample_teacher

TEACHER_STEPS = [1000, 750, 500, 250]  # the causal-teacher baseline's steps (as scripts/eval_hiar_teacher.py)

BASELINE, BIDIRECTIONAL, REAL = "causal teacher (baseline)", "bidirectional teacher", "real clips"
BIDIRECTIONAL_STEPS = 25
GOALS = {
    "accuracy": {"metric": "frame_accuracy", "at_least": 0.80, "denoising_steps": 4,
                 "text": ">= 0.80 per-frame digit accuracy over the longest video, at 4 steps"},
    "drift": {"metric": "drift", "at_most": 0.05, "text": "accuracy(first edge frames) - accuracy(last) <= 0.05"},
    "motion": {"metric": "motion_ratio", "at_least": 0.5, "text": "centroid speed >= 0.5 x real clips' speed"},
}


def _seconds(tic: tuple[float, float]) -> tuple[float, float]:
    return time.perf_counter() - tic[0], time.process_time() - tic[1]


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def generate_causal(pipe, labels: torch.Tensor, seeds: list[int], num_frames: int,
                    window: int | None) -> tuple[torch.Tensor, float, float]:
    """Videos (S * B, 1, F, H, W) in [-1, 1], seed-major, and their (wall, CPU) seconds."""
    videos, tic = [], _clock()
    for seed in seeds:
        out = pipe(labels=labels, num_frames=num_frames, window=window, output_type="latent",
                   generator=torch.Generator().manual_seed(seed))
        videos.append(out.frames.clamp(-1, 1))
    return torch.cat(videos), *_seconds(tic)


def generate_bidirectional(teacher, labels: torch.Tensor, seeds: list[int], num_frames: int,
                           size: int, guidance: float) -> tuple[torch.Tensor, float, float]:
    """The teacher's Euler samples (S * B, 1, F, H, W), seed-major, and their (wall, CPU) seconds."""
    tic = _clock()
    videos = [sample_teacher(teacher, labels, (1, num_frames, size, size), BIDIRECTIONAL_STEPS, guidance, seed,
                             batch_size=len(labels)) for seed in seeds]
    return torch.cat(videos), *_seconds(tic)


def _cost(videos: int, frames: int, wall: float, cpu: float) -> dict:
    return {"videos": videos, "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
            "cpu_seconds_per_frame": cpu / (videos * frames), "wall_seconds_per_frame": wall / (videos * frames)}


def video_metrics(videos: torch.Tensor, labels: torch.Tensor, edge: int, real_speed: float | None) -> dict:
    """The moving-digits report (:func:`fdistill.eval.moving_digits_report`) with this script's motion goal."""
    return moving_digits_report(videos, labels, edge, real_speed, frozen_below=GOALS["motion"]["at_least"])


def check_goals(row: dict, frames: int) -> dict:
    """Each goal of ``GOALS`` met / missed from the row's measurement at ``frames`` (None: not measured)."""
    m = row["lengths"].get(str(frames))
    out = {"evaluated_at_frames": frames}
    for name, goal in GOALS.items():
        value = None if m is None else m.get(goal["metric"])
        met = None
        if value is not None:
            met = value >= goal["at_least"] if "at_least" in goal else value <= goal["at_most"]
            if "denoising_steps" in goal:
                met = met and len(row["settings"]["denoising_steps"]) == goal["denoising_steps"]
        out[name] = {"value": value, "met": met}
    flags = [g["met"] for g in out.values() if isinstance(g, dict)]
    out["all_met"] = None if None in flags else all(flags)
    return out


def _student_settings(path: str, pipe) -> dict:
    meta, _ = read_hiar_student(path)
    cfg = meta.get("config", {})
    return {"asset": path, "made_by": meta.get("command"),
            "trained": {"order": cfg.get("order"), "steps": cfg.get("steps"),
                        "warmup_steps": cfg.get("warmup", cfg.get("init", {})).get("steps"),  # "init": older students
                        "divergence": cfg.get("objective", {}).get("divergence"),
                        "regulariser": cfg.get("regulariser"), "clip_frames": meta.get("num_frames"),
                        "teacher_guidance_scale": meta.get("teacher_guidance_scale")},
            **_pipe_settings(pipe)}


def _pipe_settings(pipe) -> dict:
    c = pipe.config
    return {"denoising_steps": list(c.denoising_steps), "frames_per_block": c.frames_per_block, "order": c.order,
            "context": c.context, "window": c.window, "guidance_scale": c.guidance_scale,
            "clip_frames": c.num_frames}


def _same_size(videos: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """(B, 1, F, H, W) videos at the largest H (nearest upscaling) so that models can share a picture."""
    size = max(v.shape[-1] for v in videos.values())
    return {k: F.interpolate(v, size=(v.shape[2], size, size), mode="nearest") for k, v in videos.items()}


def _strip(videos: dict[str, torch.Tensor], path: Path) -> list[str]:
    """PNG: for each model, one row per class (first seed), all frames left to right."""
    rows = torch.cat(list(_same_size(videos).values()))  # (M * C, 1, F, H, W)
    frames = rows.shape[2]
    save_image((rows.permute(0, 2, 1, 3, 4).flatten(0, 1) + 1) / 2, path, nrow=frames, padding=1, pad_value=0.5)
    return list(videos)


def _gif(videos: dict[str, torch.Tensor], path: Path, scale: int = 4, fps: int = 8) -> list[str]:
    """GIF: one line per model, the classes side by side, frames upscaled ``scale`` times."""
    from diffusers.utils import export_to_gif
    from PIL import Image

    frames, videos = [], _same_size(videos)
    for f in range(min(v.shape[2] for v in videos.values())):
        lines = [make_grid(v[:, :, f], nrow=len(v), padding=1, pad_value=0) for v in videos.values()]
        grid = torch.cat(lines, dim=1)[:1]  # (1, H', W'): grey
        grid = F.interpolate(grid[None], scale_factor=scale, mode="nearest")[0, 0]
        frames.append(Image.fromarray(((grid + 1) * 127.5).clamp(0, 255).round().byte().numpy(), mode="L"))
    export_to_gif(frames, str(path), fps=fps)
    return list(videos)


def _fmt(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown(report: dict) -> str:
    lines = ["| row | frames | steps | accuracy | first | last | drift | speed px/f | motion × real | frozen "
             "| flickering | consistency | CPU ms/frame |", "|" + "---|" * 13]
    for name, row in report["rows"].items():
        steps = len(row["settings"].get("denoising_steps", [])) or row["settings"].get("steps", "–")
        for frames, m in row["lengths"].items():
            cpu = m.get("cpu_seconds_per_frame")
            lines.append(
                f"| {name} | {frames} | {steps} | {_fmt(m['frame_accuracy'])} | {_fmt(m.get('accuracy_first'))} "
                f"| {_fmt(m.get('accuracy_last'))} | {_fmt(m.get('drift'))} | {_fmt(m['centroid_speed'], 2)} "
                f"| {_fmt(m.get('motion_ratio'), 2)} | {_fmt(m.get('frozen_fraction'), 2)} "
                f"| {_fmt(m['temporal_flickering'])} | {_fmt(m['subject_consistency'])} "
                f"| {'–' if cpu is None else f'{1e3 * cpu:.1f}'} |")
    lines += ["", "| row | goals at frames | accuracy ≥ 0.80 (4 steps) | drift ≤ 0.05 | motion ≥ 0.5× | all |",
              "|---|---|---|---|---|---|"]
    word = {True: "met", False: "missed", None: "not measured"}
    for name, row in report["rows"].items():
        if "goals" in row:
            g = row["goals"]
            cells = " | ".join(f"{word[g[k]['met']]} ({_fmt(g[k]['value'])})" for k in GOALS)
            lines.append(f"| {name} | {g['evaluated_at_frames']} | {cells} | {word[g['all_met']]} |")
    return "\n".join(lines)


def _student_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--student must be NAME=PATH, got {text!r}")
    return name, path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", type=_student_arg, action="append", default=[], metavar="NAME=PATH",
                   help="a student asset (fdistill distill-video's hiar_student.safetensors); repeatable")
    p.add_argument("--bidirectional-teacher", action="store_true",
                   help=f"add the teacher as trained ({BIDIRECTIONAL_STEPS} Euler steps, its clip length only)")
    p.add_argument("--bidirectional-guidance", type=float, default=1.0, help="its classifier-free guidance")
    p.add_argument("--teacher", default=None, help="teacher folder or asset (default: the shipped one)")
    p.add_argument("--seeds", type=int, default=2, help="videos per class, seeds 0..S-1")
    p.add_argument("--frames", type=int, nargs="+", default=[12, 96], help="video lengths (latent frames)")
    p.add_argument("--classes", type=int, default=10, help="classes 0..C-1")
    p.add_argument("--edge", type=int, default=12, help="frames of the first / last segment (drift)")
    p.add_argument("--window", type=int, default=8,
                   help="rolling window (latent frames) past the training clip for a model without one")
    p.add_argument("--gif-classes", type=int, default=5, help="classes side by side in the GIF")
    p.add_argument("--output", type=Path, default=Path("reports/hiar_student.json"))
    args = p.parse_args(argv)
    if not 1 <= args.classes <= 10:
        raise ValueError(f"--classes must be in 1..10, got {args.classes}")
    if args.seeds < 1 or min(args.frames) < 2:
        raise ValueError(f"--seeds must be >= 1 and --frames >= 2, got {args.seeds} and {args.frames}")
    torch.set_num_threads(1)
    start, load_start = time.perf_counter(), os.getloadavg()
    seeds, lengths = list(range(args.seeds)), sorted(set(args.frames))
    labels = torch.arange(args.classes)
    all_labels = labels.repeat(args.seeds)  # seed-major, as the generators return them

    teacher = load_moving_digits_teacher(args.teacher)
    data = dict(teacher.metadata["data"]["kwargs"])
    size, clip = data["size"], data["num_frames"]
    real_rows: dict[tuple[int, int], dict] = {}

    def real_speed(frames: int, frame_size: int = size) -> float:
        """Centroid speed of real clips (the teacher's data at this length and frame size)."""
        if (frame_size, frames) not in real_rows:
            real = MovingDigits(**{**data, "num_videos": len(all_labels), "num_frames": frames, "size": frame_size,
                                   "seed": 10_000})
            real_rows[frame_size, frames] = video_metrics(*real.tensors(), args.edge, None)
        return real_rows[frame_size, frames]["centroid_speed"]

    models = [(name, lambda path=path: load_hiar_student(path), path) for name, path in args.student]
    models.append((BASELINE, lambda: hiar_pipeline_from_teacher(
        args.teacher, frames_per_block=2, denoising_steps=TEACHER_STEPS, window=8, order="hierarchical"), None))
    rows: dict[str, dict] = {}
    shown: dict[str, torch.Tensor] = {}  # first seed's videos at the longest length, for the PNG and GIF
    for name, load, path in models:
        pipe = load()
        pipe.set_progress_bar_config(disable=True)
        settings = _student_settings(path, pipe) if path else {
            "teacher": args.teacher or "shipped", **_pipe_settings(pipe),
            "made_by": f"hiar_pipeline_from_teacher(frames_per_block=2, denoising_steps={TEACHER_STEPS}, "
                       "window=8, order='hierarchical')"}
        row = {"kind": "student" if path else "causal teacher", "settings": settings, "lengths": {}}
        for frames in lengths:
            window = pipe.config.window or (args.window if frames > (pipe.config.num_frames or clip) else None)
            videos, wall, cpu = generate_causal(pipe, labels, seeds, frames, window)
            m = video_metrics(videos, all_labels, args.edge, real_speed(frames, pipe.config.height))
            row["lengths"][str(frames)] = {"window": window, **m, **_cost(len(videos), frames, wall, cpu)}
            print(f"{name}, {frames} frames (window {window}): accuracy {m['frame_accuracy']:.3f}, drift "
                  f"{_fmt(m.get('drift'))}, motion {m['motion_ratio']:.2f}x real, {cpu:.1f} CPU s", flush=True)
            if frames == lengths[-1]:
                shown[name] = videos[: args.classes]
        row["goals"] = check_goals(row, lengths[-1])
        rows[name] = row

    if args.bidirectional_teacher:
        videos, wall, cpu = generate_bidirectional(teacher, labels, seeds, clip, size, args.bidirectional_guidance)
        m = video_metrics(videos, all_labels, args.edge, real_speed(clip))
        rows[BIDIRECTIONAL] = {
            "kind": "bidirectional teacher",
            "settings": {"teacher": args.teacher or "shipped", "sampler": "flow-matching Euler",
                         "steps": BIDIRECTIONAL_STEPS, "guidance_scale": args.bidirectional_guidance,
                         "made_by": "scripts/eval_teacher.py _sample (teacher.schedule.sample)",
                         "note": "not causal: only its training clip length"},
            "lengths": {str(clip): {**m, **_cost(len(videos), clip, wall, cpu)}}}
        rows[BIDIRECTIONAL]["goals"] = check_goals(rows[BIDIRECTIONAL], lengths[-1])
        print(f"{BIDIRECTIONAL}, {clip} frames: accuracy {m['frame_accuracy']:.3f}, {cpu:.1f} CPU s", flush=True)
    for frames in lengths:
        real_speed(frames)
    # a model whose frames differ from the teacher's data was compared with real clips of its own size
    for frame_size in sorted({s for s, _ in real_rows}, key=lambda s: (s != size, s)):
        name = REAL if frame_size == size else f"{REAL}, {frame_size}x{frame_size}"
        rows[name] = {"kind": "data", "settings": {"data": "fdistill.data.moving_digits.MovingDigits",
                                                   "kwargs": {**data, "size": frame_size, "seed": 10_000}},
                      "lengths": {str(f): m for (s, f), m in sorted(real_rows.items()) if s == frame_size}}

    out = args.output
    out.parent.mkdir(parents=True, exist_ok=True)
    strip_path, gif_path = out.with_name(f"{out.stem}_frames.png"), out.with_suffix(".gif")
    report = {
        "command": " ".join(["python", "scripts/eval_hiar_student.py", *(sys.argv[1:] if argv is None else argv)]),
        "settings": {"classes": args.classes, "seeds": seeds, "frames": lengths, "edge": args.edge,
                     "window_past_clip": args.window, "torch_threads": 1, "labels": "classes 0..C-1 per seed",
                     "speed_unit": "brightness-centroid pixels per frame"},
        "goals": GOALS,
        "rows": rows,
        "strip": {"path": str(strip_path), "rows": [f"{n}: classes 0..{args.classes - 1}" for n in
                                                    _strip(shown, strip_path)], "frames": lengths[-1], "seed": 0},
        "gif": {"path": str(gif_path), "lines": _gif({k: v[: args.gif_classes] for k, v in shown.items()}, gif_path),
                "classes": list(range(min(args.gif_classes, args.classes))), "frames": lengths[-1], "seed": 0},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "load_average_start": load_start, "load_average_end": os.getloadavg()},
        "wall_s": round(time.perf_counter() - start, 1),
        "note": ("CPU, one torch thread on a shared machine: wall times are noisy, CPU seconds (this process) "
                 "less so. Accuracy: fdistill.eval.frame_accuracy on digit crops. Drift needs >= 2 x edge frames."),
    }
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report))
    print(f"wrote {out}, {strip_path}, {gif_path} in {report['wall_s']:.0f} s")
    return report


if __name__ == "__main__":
    main()
