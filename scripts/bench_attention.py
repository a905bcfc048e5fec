"""Block-causal attention backends: error vs the float32 reference, time and peak memory, in one run.

    python scripts/bench_attention.py [--device cuda] [--repeats 10] [--output reports/attention_bench.json]

Shapes follow Wan2.1-1.3B attention (12 heads of 128) with ``--tokens-per-frame`` tokens per latent
frame (1560 at 480p; default 256 here) and 3 latent frames per block. Two cases per video length:

- ``train``: the masked full forward over all frames (the distillation forward), forward and
  forward + backward;
- ``cached``: one block's queries against a rolling-window KV cache (the HiAR generation step).

For every backend available on the device: max |out − reference| (the reference runs in float32),
median milliseconds over ``--repeats`` after warm-up, peak memory above the inputs (CUDA), and the
time ratio to ``sdpa``; for ``flex`` also the forward with its block mask rebuilt on every call
(``forward_mask_rebuilt_ms``, what the mask cache saves). bfloat16 runs on CUDA only.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from fdistill.kernels import attention, available_backends, block_causal_attention


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    """(median ms, peak MiB allocated above the start) after two warm-up calls."""
    fn()
    fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(1e3 * (time.perf_counter() - start))
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else float("nan")
    return statistics.median(times), peak


def bench_case(case: str, frames: int, args, device: torch.device, dtype: torch.dtype, backends: list[str]) -> dict:
    t, f_block, heads, dim = args.tokens_per_frame, args.frames_per_block, args.heads, args.head_dim
    g = torch.Generator(device="cpu").manual_seed(0)
    frame_index = torch.arange(frames).repeat_interleave(t)
    if case == "train":
        q_frames = k_frames = frame_index
    else:  # the last block against a window of `window` frames (cache + its own frames)
        window = min(args.window, frames)
        q_frames = frame_index[-f_block * t:]
        k_frames = frame_index[-window * t:]
    window = None if case == "train" else min(args.window, frames)
    shape_q = (1, heads, len(q_frames), dim)
    shape_k = (1, heads, len(k_frames), dim)
    q, k, v = (torch.randn(s, generator=g).to(device, dtype) for s in (shape_q, shape_k, shape_k))
    q_frames, k_frames = q_frames.to(device), k_frames.to(device)
    kw = dict(q_frames=q_frames, k_frames=k_frames, frames_per_block=f_block, window=window)
    row: dict = {"case": case, "frames": frames, "queries": len(q_frames), "keys": len(k_frames),
                 "dtype": str(dtype).removeprefix("torch."), "backends": {}}
    ref = None
    if len(q_frames) * len(k_frames) <= args.max_reference_elements:
        ref = block_causal_attention(q.float(), k.float(), v.float(), backend="reference", **kw)
    for backend in backends:
        entry: dict = {}
        try:
            out = block_causal_attention(q, k, v, backend=backend, **kw)
            if ref is not None:
                entry["max_abs_err"] = (out.float() - ref).abs().max().item()
            entry["forward_ms"], entry["forward_peak_mib"] = _time(
                lambda b=backend: block_causal_attention(q, k, v, backend=b, **kw), device, args.repeats)
            if backend == "flex":  # what the block-mask cache saves: the same call with the mask rebuilt

                def rebuilt(b=backend):
                    attention._BLOCK_MASKS.clear()
                    block_causal_attention(q, k, v, backend=b, **kw)

                entry["forward_mask_rebuilt_ms"], _ = _time(rebuilt, device, args.repeats)
            if case == "train" and backend != "reference" and not (backend == "flex" and device.type == "cpu"):
                qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))

                def step(b=backend, qg=qg, kg=kg, vg=vg):
                    block_causal_attention(qg, kg, vg, backend=b, **kw).float().square().mean().backward()

                entry["fwd_bwd_ms"], entry["fwd_bwd_peak_mib"] = _time(step, device, args.repeats)
        except Exception as e:  # a backend that fails here is reported, not fatal
            entry["error"] = f"{type(e).__name__}: {e}"[:300]
        row["backends"][backend] = entry
        print(case, frames, row["dtype"], backend, {name: float(f"{x:.4g}") if isinstance(x, float) else x
                                                    for name, x in entry.items()}, flush=True)
    base = row["backends"].get("sdpa", {})
    for entry in row["backends"].values():
        for key in ("forward_ms", "fwd_bwd_ms"):
            if key in entry and key in base:
                entry[key.replace("_ms", "_vs_sdpa")] = entry[key] / base[key]
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--tokens-per-frame", type=int, default=256)
    p.add_argument("--frames", type=int, nargs="+", default=[6, 12, 24, 48])
    p.add_argument("--frames-per-block", type=int, default=3)
    p.add_argument("--window", type=int, default=12, help="rolling window (frames) of the cached case")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--max-reference-elements", type=int, default=2**27, help="skip the reference above Lq*Lk")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--output", default="reports/attention_bench.json")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    backends = available_backends(device)
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "backends": backends, "args": vars(args), "rows": []}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    for dtype in dtypes:
        for case in ("train", "cached"):
            for frames in args.frames:
                report["rows"].append(bench_case(case, frames, args, device, dtype, backends))
                # written after every row, so a run cut short keeps what it measured
                Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
