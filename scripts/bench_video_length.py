"""Videos of any length with the rolling window: the moving-digits teacher run causally, or a HiAR student, at 12, 96 and 1,000 frames.

    python scripts/bench_video_length.py [--lengths 12 96 1000] [--labels 10] [--output reports/video_length.json]
    python scripts/bench_video_length.py --student [PATH] --output reports/video_length_student.json

The shipped teacher (``hiar_pipeline_from_teacher()``; trained bidirectionally on 12-frame clips,
RoPE table up to ``rope_max_seq_len`` = 64 frames) generates block-causally with a window of 8
latent frames, 2 frames per block and 4 steps (1000/750/500/250), one torch thread. ``--student``
runs a HiAR student asset instead (default: the shipped one) with its saved steps and frames per
block, and its saved window (8 when it has none). Order
``wavefront``: the same video as the pipeline's default ``hierarchical`` (tests/test_hiar.py), with
at most K blocks in flight, where ``hierarchical`` keeps every block's next-step input (memory
linear in the length). The cells are driven here with the pipeline's own pieces (``prepare_latents``,
``schedule``, ``transformer``, ``label_embedding``) so that the state between cells can be read;
the 12-frame video is checked against ``pipe(...)``.

Rows:

- one label (batch 1) at each length: time per frame (whole video, and between block completions
  over the first and the last 12 frames), memory, and digit accuracy of the first and last 12 frames
  (and per 100 frames of the long video);
- ``--labels`` labels (batch B, one video per class) at 96 frames: accuracy over classes. The first
  12 frames of a longer video are the 12-frame video (causal generation, same noise bank), checked;
- one label at 96 frames without a window, for contrast (memory and attention span grow).

Memory on CPU: ``state_bytes`` are the exact bytes held between cells (KV caches, deferred cache
writes, blocks in flight; not the finished frames, counted as ``output_bytes``), peak over the run;
``peak_rss_mib`` is the process's peak resident memory during the run (Linux VmHWM, reset before
each run through /proc/self/clear_refs), which includes the model, Python and the allocator's slack.
tracemalloc does not see torch's tensor allocations, so it is not used.

``rope`` checks the positions themselves: float32 cos of float32 angles vs of float64 angles (what
``CausalWanTransformer3DModel`` computes) at large positions, and the teacher's windowed output for
12 frames at frame offsets 0 and far beyond the table (RoPE attention is relative: equal up to rounding).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

from fdistill.eval import frame_accuracy
from fdistill.models.causal_wan import _frame_rope
from fdistill.models.hiar_cell import HiARCells, HiARPlan, cell_waves, denoising_times, run_cells
from fdistill.pipelines import hiar_pipeline_from_teacher, load_hiar_student
from fdistill.pipelines.hiar_student import read_hiar_student

STEPS = [1000, 750, 500, 250]
FRAMES_PER_BLOCK, WINDOW, ORDER, SEED = 2, 8, "wavefront", 0  # the teacher's; a student brings its own
EDGE = 12  # frames compared at the start and the end of a video: the training clip's length


def _peak_rss_mib() -> float:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def _reset_peak_rss() -> float:
    """Reset the peak resident memory to the current one, returned in MiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def _generate(pipe, labels: torch.Tensor, num_frames: int, window: int | None) -> tuple[torch.Tensor, dict]:
    """Latents (B, 1, F, H, W) of the pipeline's video for ``labels`` and what the run measured."""
    size, fpb = pipe.config.height, pipe.config.frames_per_block
    bank = pipe.prepare_latents(len(labels), pipe.transformer.config.in_channels, size, size, num_frames,
                                fpb, generator=torch.Generator().manual_seed(SEED))
    plan = HiARPlan(denoising_times(pipe.schedule, list(pipe.config.denoising_steps)), num_frames // fpb, fpb,
                    window=window)
    blocks: dict[int, torch.Tensor] = {}
    finished: list[tuple[float, float]] = []  # (wall, CPU) seconds at each block's completion
    peak = {"state": 0, "cache": 0}

    def on_block(b: int, x0: torch.Tensor) -> None:
        blocks[b] = x0
        finished.append((time.perf_counter(), time.process_time()))

    with torch.no_grad():
        cells = HiARCells(pipe.transformer, pipe.schedule, plan, pipe.label_embedding(labels), bank, on_block=on_block)

        def on_cell() -> None:
            peak["state"] = max(peak["state"], cells.state_nbytes())
            peak["cache"] = max(peak["cache"], sum(c.nbytes() for c in cells._caches.values()))

        rss_before = _reset_peak_rss()
        start, cpu_start = time.perf_counter(), time.process_time()
        run_cells(cells, cell_waves(ORDER, plan.num_blocks, plan.num_steps), on_cell)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    video = torch.cat([blocks[b] for b in range(plan.num_blocks)], dim=2)
    # time per frame between block completions (the first block also carries the wavefront's ramp)
    per_frame = torch.tensor(finished, dtype=torch.float64).diff(dim=0) / fpb  # (N - 1, 2)
    edge_blocks = EDGE // fpb
    first, last = per_frame[: edge_blocks - 1].mean(0).tolist(), per_frame[-edge_blocks:].mean(0).tolist()
    timing = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "seconds_per_frame": wall / num_frames,
              "cpu_seconds_per_frame": cpu / num_frames,
              "seconds_per_frame_first_12": first[0], "seconds_per_frame_last_12": last[0],
              "cpu_seconds_per_frame_first_12": first[1], "cpu_seconds_per_frame_last_12": last[1]}
    if num_frames >= 200:  # along the video: frames a .. a + 99 (block completions within them)
        per_100 = [per_frame[max(a // fpb - 1, 0) : (a + 100) // fpb - 1].mean(0).tolist()
                   for a in range(0, num_frames, 100)]
        timing["cpu_seconds_per_frame_per_100_frames"] = [c for _, c in per_100]
        timing["seconds_per_frame_per_100_frames"] = [w for w, _ in per_100]
    return video, {
        **timing,
        "peak_state_bytes": peak["state"], "peak_cache_bytes": peak["cache"],
        "output_bytes": video.numel() * video.element_size(), "rss_before_mib": round(rss_before, 1),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
        "max_cached_frame": int(max(c.frames.max() for c in cells._caches.values())),
    }


def _accuracy(video: torch.Tensor, labels: torch.Tensor) -> dict:
    video = video.clamp(-1, 1)
    frames = video.shape[2]
    # the keys of fdistill.eval.moving_digits_report (its flow metrics cost too much on 1,000 frames)
    out = {"frame_accuracy": frame_accuracy(video, labels), "accuracy_first": frame_accuracy(video[:, :, :EDGE], labels),
           "accuracy_last": frame_accuracy(video[:, :, -EDGE:], labels)}
    if frames >= 200:  # accuracy along the video, per 100 frames
        out["per_100_frames"] = [frame_accuracy(video[:, :, a : a + 100], labels) for a in range(0, frames, 100)]
    if len(labels) > 1:  # per video (label): which classes hold
        out["per_label_first"], out["per_label_last"] = (
            [frame_accuracy(video[i : i + 1, :, edge], labels[i : i + 1]) for i in range(len(labels))]
            for edge in (slice(None, EDGE), slice(-EDGE, None)))
    return out


def rope_checks(pipe) -> dict:
    """Float32 vs float64 angles at large positions, and the teacher's output at shifted frame offsets."""
    dim = pipe.transformer.rope.t_dim
    inverse64 = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    precision = {}
    for position in (11, 63, 64, 96, 1000, 10**5, 10**6):
        exact = (position * inverse64).cos()
        float32_angle = (torch.tensor(float(position)) * inverse64.float()).cos().double()
        ours = _frame_rope(position, 1, dim, torch.device("cpu"))[0][0, 0::2].double()
        precision[str(position)] = {"float32_angles_max_err": (float32_angle - exact).abs().max().item(),
                                    "float64_angles_max_err": (ours - exact).abs().max().item()}
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(1, 1, EDGE, pipe.config.height, pipe.config.width, generator=g)
    t = torch.linspace(900, 100, EDGE)[None]
    cond = pipe.label_embedding(torch.tensor([3]))
    kw = dict(attention="block_causal", frames_per_block=pipe.config.frames_per_block, window=WINDOW)
    with torch.no_grad():
        base = pipe.transformer(x, t, cond, **kw).sample
        shifted = {str(o): (pipe.transformer(x, t, cond, frame_offset=o, **kw).sample - base).abs().max().item()
                   for o in (64, 900, 10**6)}
    return {"cos_error_vs_float64_reference": precision,
            "windowed_output_max_abs_diff_vs_offset_0": shifted, "output_max_abs": base.abs().max().item()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[12, 96, 1000], help="frames (latent = pixel here)")
    p.add_argument("--labels", type=int, default=10, help="labels (0..n-1) of the batched accuracy rows")
    p.add_argument("--label", type=int, default=3, help="the label of the batch-1 rows")
    p.add_argument("--long", type=int, default=96, help="frames of the batched-labels and the no-window rows")
    p.add_argument("--student", nargs="?", const="shipped", default=None,
                   help="a HiAR student asset instead of the teacher (no value: the shipped student)")
    p.add_argument("--output", default="reports/video_length.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.student is None:
        pipe = hiar_pipeline_from_teacher(frames_per_block=FRAMES_PER_BLOCK, denoising_steps=STEPS, window=WINDOW)
        model = {"teacher": "fdistill/assets/moving_digits_teacher", "trained_clip_frames": 12}
    else:
        pipe = load_hiar_student(None if args.student == "shipped" else args.student)
        meta = read_hiar_student(None if args.student == "shipped" else args.student)[0]
        model = {"student": args.student, "trained_clip_frames": meta.get("num_frames")}
    window = pipe.config.window or WINDOW
    pipe.set_progress_bar_config(disable=True)
    start, load_start = time.perf_counter(), os.getloadavg()

    one = torch.tensor([args.label])
    clip, _ = _generate(pipe, one, EDGE, window)
    vs_pipe = {order: (clip - pipe(labels=one, num_frames=EDGE, order=order, window=window, output_type="latent",
                                   generator=torch.Generator().manual_seed(SEED)).frames).abs().max().item()
               for order in (ORDER, "hierarchical")}
    print(f"12 frames vs pipe(): max abs diff {vs_pipe}", flush=True)

    rows = []
    runs = [(one, n, window) for n in args.lengths]
    runs += [(torch.arange(args.labels), args.long, window)] if args.labels > 1 else []
    runs += [(one, args.long, None)]
    for labels, frames, run_window in runs:
        video, row = _generate(pipe, labels, frames, run_window)
        row = {"num_frames": frames, "batch": len(labels), "labels": labels.tolist(), "window": run_window, **row,
               "finite": bool(torch.isfinite(video).all()), "frame_accuracy": _accuracy(video, labels)}
        if len(labels) == 1 and window is not None:  # causal: the first 12 frames are the 12-frame video
            row["first_12_max_abs_diff_vs_12_frame_video"] = (video[:, :, :EDGE] - clip).abs().max().item()
        rows.append(row)
        acc = row["frame_accuracy"]
        print(f"{frames:5d} frames  batch {len(labels):2d}  window {run_window!s:4s}  {row['wall_s']:7.1f} s  "
              f"{1e3 * row['seconds_per_frame']:6.1f} ms/frame, CPU {1e3 * row['cpu_seconds_per_frame']:6.1f} "
              f"(first 12 {1e3 * row['cpu_seconds_per_frame_first_12']:.1f}, last 12 "
              f"{1e3 * row['cpu_seconds_per_frame_last_12']:.1f})  state {row['peak_state_bytes'] / 1024:.0f} KiB"
              f"  RSS {row['peak_rss_mib']:.0f} MiB  acc {acc['frame_accuracy']:.2f} (first 12 "
              f"{acc['accuracy_first']:.2f}, last 12 {acc['accuracy_last']:.2f})", flush=True)

    report = {
        "command": " ".join(["python", "scripts/bench_video_length.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "torch_threads": 1, "platform": platform.platform(),
                    "torch": torch.__version__, "load_average_start": load_start, "load_average_end": os.getloadavg()},
        "model": {**model, "rope_max_seq_len": pipe.transformer.config.rope_max_seq_len, "frame": [1, 16, 16]},
        "generation": {"order": ORDER, "same_video_as": "hierarchical",
                       "frames_per_block": pipe.config.frames_per_block, "window": window,
                       "denoising_steps": list(pipe.config.denoising_steps), "seed": SEED,
                       "max_abs_diff_vs_pipe_call_12_frames": vs_pipe},
        "rope": rope_checks(pipe),
        "runs": rows,
        "wall_s": round(time.perf_counter() - start, 1),
        "note": ("CPU, one torch thread on a shared 2-core machine (see load averages): wall times are noisy; "
                 "cpu_seconds (this process's CPU time) depend less on the other jobs. "
                 "state_bytes: exact bytes held between cells (KV caches, deferred writes, blocks in flight), "
                 "peak over the run; peak_rss_mib: process peak resident memory during the run (VmHWM reset "
                 "before it). Accuracy: fdistill.eval.frame_accuracy on digit crops; the batch-1 rows score "
                 "one video (12 frames per edge), so their first/last-12 numbers move in steps of 1/12; the "
                 "batch-10 row (one video per class) is the quality measurement."),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.output} in {report['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
