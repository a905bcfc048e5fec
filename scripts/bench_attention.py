"""Block-causal attention backends on Wan2.1-1.3B attention shapes: error, time, TFLOP/s and peak memory.

    python scripts/bench_attention.py --device cuda --output reports/attention_bench_h100_triton.json
    python scripts/bench_attention.py --device cpu --smoke     # tiny shapes; Triton in its interpreter

Shapes: 12 heads of 128, ``--tokens-per-frame`` 1560 (Wan2.1 at 480p), 3 latent frames per block,
videos of ``--frames`` 4, 8, 12, 21 latent frames (6k–33k tokens). Cases per length:

- ``train``: every frame against every frame, no cache (the distillation forward): forward, and
  forward + backward;
- ``cached``: the last whole block's queries against a KV cache of all earlier frames plus its own
  (a generation step);
- ``window``: the same against a rolling window of ``--window`` frames (only where the cache is longer).

Per backend available on the device (sdpa, flex compiled with its cached block mask, xformers when
installed, triton): max |out − reference| where the float32 reference fits in
``--max-reference-elements`` (and of dq, dk, dv in ``train``), max |out − sdpa| always; the median
of ``--repeats`` calls queued back to back (CUDA events) after two warm-ups; TFLOP/s of the visible
work (4·H·D per visible query-key pair forward, 2.5× that backward: masked pairs are not counted);
peak memory allocated above the inputs; the time ratio to sdpa. ``flex`` also reports the forward
with its block mask rebuilt on every call. bfloat16 runs first, then float32. Rows past
``--time-budget-s`` are recorded as skipped, so one GPU run ends in time (~8 min on an H100).

``speed_order`` at the end: per dtype, the backends by the geometric mean of their time relative
to sdpa over every measured row: the entry to copy into ``MEASURED_SPEED_ORDER`` of
``kernels/attention.py`` (which ``backend="auto"`` follows).

On the CPU, ``--smoke`` runs tiny shapes in float32 with Triton under ``TRITON_INTERPRET=1`` (set by
this script before triton is imported): the interpreter checks correctness, its times are not speed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import time
from pathlib import Path

import torch

from fdistill.kernels import attention, available_backends, block_causal_attention

SMOKE = dict(tokens_per_frame=16, frames=[4, 8], heads=2, head_dim=32, window=3, repeats=1)
INTERPRETER_NOTE = "interpreter: correctness only, not speed (Triton under TRITON_INTERPRET=1 on the CPU)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeats: int) -> tuple[float, float | None]:
    """(median ms, peak MiB allocated above the start; None on the CPU) of ``repeats`` calls after two warm-ups."""
    fn()
    fn()
    _sync(device)
    if device.type != "cuda":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - start))
        return statistics.median(times), None
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for start, end in events:  # queued back to back: host-side launch costs overlap the GPU work, as in a model
        start.record()
        fn()
        end.record()
    _sync(device)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return statistics.median(start.elapsed_time(end) for start, end in events), peak


def visible_pairs(q_frames: torch.Tensor, k_frames: torch.Tensor, frames_per_block: int, window: int | None) -> int:
    """Number of (query, key) pairs the block-causal rule lets attend (the unmasked work)."""
    per_frame = torch.bincount(k_frames[k_frames >= 0], minlength=int(q_frames.max()) + 1)
    below = torch.cat([per_frame.new_zeros(1), per_frame.cumsum(0)])  # below[f]: keys of frames < f
    hi = ((torch.div(q_frames, frames_per_block, rounding_mode="floor") + 1) * frames_per_block - 1)
    hi = hi.clamp(max=len(per_frame) - 1)
    lo = torch.zeros_like(hi) if window is None else (hi + 1 - window).clamp(min=0)
    return int((below[hi + 1] - below[lo]).sum())


def layout(case: str, frames: int, args) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """(q_frames, k_frames, window) of one case: a whole video, or its last whole block against a cache
    of the frames before it (all of them, or those in the window)."""
    t, fpb = args.tokens_per_frame, args.frames_per_block
    index = torch.arange(frames).repeat_interleave(t)
    if case == "train":
        return index, index, None
    end = frames // fpb * fpb  # one past the last frame of the last whole block
    q_frames = index[(end - fpb) * t : end * t]
    if case == "cached":
        return q_frames, index[: end * t], None
    return q_frames, index[max(0, end - args.window) * t : end * t], args.window


def bench_case(case: str, frames: int, dtype: torch.dtype, args, device: torch.device, backends: list[str],
               deadline: float) -> dict:
    q_frames, k_frames, window = layout(case, frames, args)
    fpb, heads, dim = args.frames_per_block, args.heads, args.head_dim
    pairs = visible_pairs(q_frames, k_frames, fpb, window)
    flop_fwd = 4 * heads * dim * pairs
    g = torch.Generator(device="cpu").manual_seed(0)
    shapes = ((1, heads, len(q_frames), dim), (1, heads, len(k_frames), dim), (1, heads, len(k_frames), dim))
    q, k, v = (torch.randn(s, generator=g).to(device, dtype) for s in shapes)
    grad_out = torch.randn(shapes[0], generator=g).to(device, dtype)
    kw = dict(q_frames=q_frames.to(device), k_frames=k_frames.to(device), frames_per_block=fpb, window=window)
    train = case == "train"
    row: dict = {"case": case, "frames": frames, "queries": len(q_frames), "keys": len(k_frames), "window": window,
                 "dtype": str(dtype).removeprefix("torch."), "visible_pairs": pairs,
                 "visible_fraction": pairs / (len(q_frames) * len(k_frames)), "backends": {}}

    def with_backward(backend: str) -> bool:  # flex's eager CPU path is forward-only
        return train and not (backend == "flex" and device.type == "cpu")

    def forward_and_grads(backend: str, q=q, k=k, v=v):
        qg, kg, vg = (x.detach().requires_grad_(with_backward(backend)) for x in (q, k, v))
        out = block_causal_attention(qg, kg, vg, backend=backend, **kw)
        grads = torch.autograd.grad(out, (qg, kg, vg), grad_out.to(out.dtype)) if with_backward(backend) else ()
        return out.detach(), grads

    ref = None
    if len(q_frames) * len(k_frames) <= args.max_reference_elements:
        ref = forward_and_grads("reference", q.float(), k.float(), v.float())
    sdpa_out = None
    for backend in backends:
        entry: dict = {}
        row["backends"][backend] = entry
        if time.monotonic() > deadline:
            entry["skipped"] = "time budget"
            continue
        try:
            out, grads = forward_and_grads(backend)
            if backend == "sdpa":
                sdpa_out = out
            if sdpa_out is not None:
                entry["max_abs_diff_vs_sdpa"] = (out.float() - sdpa_out.float()).abs().max().item()
            if ref is not None:
                entry["max_abs_err"] = (out.float() - ref[0]).abs().max().item()
                for name, got, expected in zip(("dq", "dk", "dv"), grads, ref[1], strict=False):
                    entry[f"{name}_max_abs_err"] = (got.float() - expected).abs().max().item()
            del out, grads
            entry["forward_ms"], entry["forward_peak_mib"] = _time(
                lambda b=backend: block_causal_attention(q, k, v, backend=b, **kw), device, args.repeats)
            entry["forward_tflops"] = flop_fwd / entry["forward_ms"] / 1e9
            if backend == "flex":  # what the block-mask cache saves: the same call with the mask rebuilt

                def rebuilt(b=backend):
                    attention._BLOCK_MASKS.clear()
                    block_causal_attention(q, k, v, backend=b, **kw)

                entry["forward_mask_rebuilt_ms"], _ = _time(rebuilt, device, args.repeats)
            if with_backward(backend):
                entry["fwd_bwd_ms"], entry["fwd_bwd_peak_mib"] = _time(
                    lambda b=backend: forward_and_grads(b), device, args.repeats)
                entry["fwd_bwd_tflops"] = 3.5 * flop_fwd / entry["fwd_bwd_ms"] / 1e9
        except Exception as e:  # a backend that fails (or runs out of memory) here is reported, not fatal
            entry["error"] = f"{type(e).__name__}: {e}"[:300]
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print(case, frames, row["dtype"], backend, {name: float(f"{x:.4g}") if isinstance(x, float) else x
                                                    for name, x in entry.items()}, flush=True)
    base = row["backends"].get("sdpa", {})
    for entry in row["backends"].values():
        for key in ("forward_ms", "fwd_bwd_ms"):
            if key in entry and key in base:
                entry[key.replace("_ms", "_vs_sdpa")] = entry[key] / base[key]
    return row


def speed_order(rows: list[dict]) -> dict[str, list[str]]:
    """Per dtype, backends by the geometric mean of their time relative to sdpa (fastest first)."""
    ratios: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        for backend, entry in row["backends"].items():
            for key in ("forward_vs_sdpa", "fwd_bwd_vs_sdpa"):
                if key in entry and backend != "reference":
                    ratios.setdefault(row["dtype"], {}).setdefault(backend, []).append(math.log(entry[key]))
    return {dtype: sorted(per, key=lambda b: statistics.fmean(per[b])) for dtype, per in ratios.items()}


def device_tag(device: torch.device, smoke: bool) -> str:
    if device.type != "cuda":
        return "cpu_smoke" if smoke else "cpu"
    match = re.search(r"[A-Z]\d{2,3}", torch.cuda.get_device_name(device))
    return match.group(0).lower() if match else "cuda"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, float32, one repeat (the CPU check)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tokens-per-frame", type=int, default=1560)
    p.add_argument("--frames", type=int, nargs="+", default=[4, 8, 12, 21])
    p.add_argument("--frames-per-block", type=int, default=3)
    p.add_argument("--window", type=int, default=12, help="rolling window (frames) of the window case")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--max-reference-elements", type=int, default=2**27, help="skip the reference above Lq*Lk")
    p.add_argument("--time-budget-s", type=float, default=450, help="rows after this are recorded as skipped")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--output", default=None, help="default: reports/attention_bench_<device>.json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.smoke:
        for name, value in SMOKE.items():
            setattr(args, name, value)
    if device.type == "cpu" and args.smoke:
        # triton reads this when it is imported (nothing above imports it): the kernels run interpreted
        os.environ["TRITON_INTERPRET"] = "1"
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":  # (torch._dynamo imports triton: not before TRITON_INTERPRET is settled)
        from torch._dynamo import config as dynamo_config

        # compiled flex recompiles per shape (dynamic=False); past dynamo's limit (8) it falls back to eager
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
    backends = [b for b in available_backends(device) if b != "reference"]
    if device.type == "cpu" and not args.smoke:
        backends = [b for b in backends if b != "triton"]  # the interpreter is far too slow for real shapes
    dtypes = ([torch.bfloat16] if device.type == "cuda" and not args.smoke else []) + [torch.float32]
    output = Path(args.output or f"reports/attention_bench_{device_tag(device, args.smoke)}.json")
    versions = {"torch": torch.__version__}
    for package in ("triton", "xformers"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            versions[package] = None
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              **versions, "backends": backends, "args": vars(args), "rows": []}
    if device.type == "cpu" and "triton" in backends:
        report["note"] = INTERPRETER_NOTE
    output.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.time_budget_s
    for dtype in dtypes:
        for case in ("train", "cached", "window"):
            for frames in args.frames:
                if case == "window" and frames // args.frames_per_block * args.frames_per_block <= args.window:
                    continue  # the window holds the whole cache: the cached case again
                report["rows"].append(bench_case(case, frames, dtype, args, device, backends, deadline))
                report["speed_order"] = speed_order(report["rows"])
                # written after every row, so a run cut short keeps what it measured
                output.write_text(json.dumps(report, indent=1) + "\n")
    print("speed order (fastest first):", report["speed_order"])
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
