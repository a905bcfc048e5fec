"""Benchmark the HiAR cell orders on CPU and write reports/hiar_bench.json.

    python scripts/bench_hiar.py [--repeats 5] [--output reports/hiar_bench.json] [--device cuda]

1. Orders, same inputs, one run of this script: sequential, hierarchical, wavefront (each with
   and without the fused cache write) in one process with one torch thread, and pipelined with 2
   processes of one thread each (and 4, oversubscribed on 2 cores), N = 8 blocks, K = 4 steps, on
   a small random CausalWan shaped like the first moving-digits teacher. Wall-clock medians over
   ``--repeats`` runs after a warm-up; the pipelined schedule's ideal speedup N·P / (N + P − 1)
   for P processes (N·K / (N + K − 1) with one process per step) and the measured fraction of it.
2. Rolling window: time per frame and memory for videos of 1×, 2×, 4× and 8× the window (finished
   blocks streamed out), with and without the window. Memory: the bytes held between cells
   (KV caches, deferred writes, blocks in flight; exact), the KV caches alone, and the process's
   peak RSS (monotonic, so growth shows as an increase).

One torch thread per process: on this shared 2-core machine two OpenMP threads per process run
this small model 10-30× slower than one (oversubscription). Numbers are noisy; medians are reported.

``--device cuda`` runs the single-process orders and the window study on one GPU (memory: CUDA
peak allocated); the pipelined runtime needs one GPU per rank (NCCL), so it is skipped unless
``torch.cuda.device_count() >= 2``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from fdistill.models import CausalWanTransformer3DModel
from fdistill.models.hiar_cell import HiARCells, HiARPlan, NoiseBank, cell_waves, denoising_times, run_cells
from fdistill.pipelines.hiar_parallel import generate_video_pipelined, ideal_speedup
from fdistill.schedules import FlowMatchingSchedule

# the shape of the first moving-digits teacher (2 heads x 32, 4 layers, 241k parameters), random weights
SMALL = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=1, out_channels=1,
             text_dim=32, freq_dim=32, ffn_dim=128, num_layers=4, rope_max_seq_len=64)
# a wider model on 32x32 frames (256 tokens per frame), where batching matters on a GPU
MEDIUM = dict(SMALL, num_attention_heads=8, attention_head_dim=64, ffn_dim=2048, num_layers=8, text_dim=64)
MODELS = {"small": (SMALL, 16), "medium": (MEDIUM, 32)}
STEPS = [1000, 750, 500, 250]
QUICK = False
F, SIZE = 2, 16
DEVICE = torch.device("cpu")


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def _median_time(fn, repeats: int) -> tuple[float, list[float], float]:
    """(median wall seconds, wall seconds per run, median CPU seconds of this process) after a warm-up."""
    fn()
    times, cpu = [], []
    for _ in range(repeats):
        _sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    return statistics.median(times), times, statistics.median(cpu)


def _run(model, schedule, plan, condition, order, on_cell=None, stream=False):
    cells = HiARCells(model, schedule, plan, condition, NoiseBank(0, (1, 1, F, SIZE, SIZE), device=DEVICE),
                      clean_context=order == "sequential", on_block=(lambda b, x0: None) if stream else None)
    with torch.no_grad():
        run_cells(cells, cell_waves(order, plan.num_blocks, plan.num_steps), on_cell and (lambda: on_cell(cells)))
    return cells


def bench_orders(model, schedule, condition, repeats: int) -> dict:
    times = denoising_times(schedule, STEPS)
    num_blocks, num_steps = (3 if QUICK else 8), len(STEPS)
    out: dict = {"num_blocks": num_blocks, "num_steps": num_steps, "frames_per_block": F, "orders": {}}
    reference = None
    variants = [(order, fused, "next") for order in ("sequential", "hierarchical", "wavefront") for fused in (True, False)]
    for order, fused, context in [*variants, ("hierarchical", True, "same")]:
        plan = HiARPlan(times, num_blocks, F, fused=fused, context=context)
        cells = _run(model, schedule, plan, condition, order)
        median, runs, cpu = _median_time(
            lambda plan=plan, order=order: _run(model, schedule, plan, condition, order), repeats)
        name = order + ("" if fused else "_unfused") + ("_context_same" if context == "same" else "")
        out["orders"][name] = {"median_s": median, "runs_s": runs, "cpu_median_s": cpu,
                               "forwards": cells.num_forwards, "frames_processed": cells.frames_processed}
        if order == "hierarchical" and fused and context == "next":
            reference = torch.cat([cells.outputs[b] for b in range(num_blocks)], dim=2)
        print(f"{name:28s} {median:7.3f} s  {cells.num_forwards:3d} forwards  {cells.frames_processed:3d} frames",
              flush=True)

    base, base_cpu = out["orders"]["hierarchical"]["median_s"], out["orders"]["hierarchical"]["cpu_median_s"]
    plan = HiARPlan(times, num_blocks, F)
    bank = NoiseBank(0, (1, 1, F, SIZE, SIZE))
    gpus = torch.cuda.device_count() if DEVICE.type == "cuda" else 0
    counts = (2,) if QUICK else (2, 4)
    for processes in counts if DEVICE.type == "cpu" else [p for p in counts if p <= gpus]:
        runs, computes, cpus = [], [], []
        for i in range(repeats + 1):
            timing: dict = {}
            video = generate_video_pipelined(model, schedule, plan, condition, bank, processes,
                                             threads_per_process=1, timing=timing)
            if i == 0:  # warm-up (starts the fork server); check the video once
                max_diff = (video - reference).abs().max().item()
                continue
            runs.append(timing["total_s"])
            computes.append(timing["compute_s"])
            cpus.append(max(timing["cpu_s"]))
        ideal = num_blocks * processes / (num_blocks + processes - 1)
        total, compute, cpu = statistics.median(runs), statistics.median(computes), statistics.median(cpus)
        out["orders"][f"pipelined_{processes}"] = {
            "median_s": total, "runs_s": runs, "compute_median_s": compute, "compute_runs_s": computes,
            "processes": processes, "max_abs_diff_vs_hierarchical": max_diff,
            "ideal_speedup": ideal, "speedup_vs_hierarchical": base / total,
            "compute_speedup_vs_hierarchical": base / compute,
            "fraction_of_ideal": base / total / ideal, "compute_fraction_of_ideal": base / compute / ideal,
            "cpu_median_s_slowest_rank": cpu, "cpu_speedup_vs_hierarchical": base_cpu / cpu,
            "cpu_fraction_of_ideal": base_cpu / cpu / ideal,
        }
        print(f"pipelined_{processes:<14d} {total:7.3f} s  (compute {compute:.3f} s; ideal ×{ideal:.2f}, "
              f"got ×{base / total:.2f} wall, ×{base_cpu / cpu:.2f} CPU time; diff {max_diff:.1e})", flush=True)
    out["ideal_speedup_one_process_per_step"] = ideal_speedup(num_blocks, num_steps)
    orders = out["orders"]
    out["ratios_vs_sequential"] = {k: orders["sequential"]["median_s"] / v["median_s"] for k, v in orders.items()}
    out["fused_write_speedup"] = {o: orders[f"{o}_unfused"]["median_s"] / orders[o]["median_s"]
                                  for o in ("sequential", "hierarchical", "wavefront")}
    return out


def bench_window(model, schedule, condition, repeats: int) -> dict:
    times = denoising_times(schedule, STEPS)
    window = 8
    out: dict = {"window_frames": window, "frames_per_block": F, "runs": []}
    for order in ("sequential", "wavefront"):
        for use_window in (True, False):
            for multiple in (1, 2) if QUICK else (1, 2, 4, 8):
                frames = multiple * window
                plan = HiARPlan(times, frames // F, F, window=window if use_window else None)
                peak = {"state": 0, "cache": 0}

                def measure(cells, peak=peak):
                    peak["state"] = max(peak["state"], cells.state_nbytes())
                    peak["cache"] = max(peak["cache"], sum(c.nbytes() for c in cells._caches.values()))

                _run(model, schedule, plan, condition, order, measure, stream=True)
                median, _, _ = _median_time(lambda plan=plan, order=order: _run(model, schedule, plan, condition, order,
                                                                             stream=True), repeats)
                row = {"order": order, "window": window if use_window else None, "num_frames": frames,
                       "window_multiple": multiple, "seconds_per_frame": median / frames,
                       "peak_state_bytes": peak["state"], "peak_cache_bytes": peak["cache"],
                       "process_max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
                if DEVICE.type == "cuda":
                    row["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(DEVICE) / 2**20
                    torch.cuda.reset_peak_memory_stats(DEVICE)
                out["runs"].append(row)
                print(f"{order:12s} window={row['window']!s:4s} {frames:3d} frames  {1e3 * median / frames:6.1f} ms/frame"
                      f"  state {peak['state'] / 1024:7.1f} KiB  cache {peak['cache'] / 1024:7.1f} KiB", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (3 blocks, 2 processes, windows up to 2x): checks the script, measures nothing")
    parser.add_argument("--output", default="reports/hiar_bench.json")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: single-process orders on one GPU")
    parser.add_argument("--model", default="small", choices=list(MODELS),
                        help="small: the first moving-digits teacher's shape (241k params) on 16x16; medium: 8x64 heads, 8 layers, 32x32")
    args = parser.parse_args()
    global DEVICE, SIZE, QUICK
    QUICK = args.quick
    DEVICE = torch.device(args.device)
    config, SIZE = MODELS[args.model]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = CausalWanTransformer3DModel(**config).eval().to(DEVICE)
    schedule = FlowMatchingSchedule(shift=2.0)
    condition = torch.randn(1, 1, config["text_dim"], generator=torch.Generator().manual_seed(0)).to(DEVICE)
    start, load_start = time.perf_counter(), os.getloadavg()
    report = {
        "machine": {"device": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu",
                    "cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "threads_per_process": 1, "load_average_start": load_start},
        "model": {"name": args.model, "config": config, "parameters": sum(p.numel() for p in model.parameters()),
                  "frame": [1, SIZE, SIZE], "batch": 1, "denoising_steps": STEPS},
        "repeats": args.repeats,
        "orders": bench_orders(model, schedule, condition, args.repeats),
        "rolling_window": bench_window(model, schedule, condition, max(1, args.repeats // 2)),
    }
    report["machine"]["load_average_end"] = os.getloadavg()
    report["wall_s"] = time.perf_counter() - start
    report["note"] = ("2 shared CPU cores (other jobs running: see load averages); medians of noisy runs. "
                      "Single-process orders use 1 torch thread, pipelined P processes x 1 thread. On CPU the "
                      "wavefront's batching saves per-forward overhead but pads attention; its gain is a GPU "
                      "effect. pipelined total_s includes process start from a warm fork server; compute_s is "
                      "the slowest rank between barriers. CPU-time ratios (this process's, or the slowest rank's, CPU "
                      "seconds) show the split of work when other jobs hold the cores: wall-clock speedup needs "
                      "idle cores.")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.output} in {report['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
