"""Per-iteration cost of the f-divergence weighting vs reverse-KL, in one run on the same inputs.

    .venv/bin/python scripts/bench_train_step.py [--repeats 3] [--steps 12] [--batch-size 32]
        [--mixed-precision bf16] [--report reports/bench_train_step.json]

The trainer runs on the GPU when one is visible (accelerate), else on the CPU.

Every divergence runs the same trainer (``fdistill distill``) on the shipped digits teacher with the
same discriminator and GAN weight, so the only difference is h(r) and the ratio normaliser.
Runs are interleaved (rkl, js, fkl, rkl, …) to spread machine noise; the figure per run is the
median seconds per iteration after the first logging window, and the report gives the median over
repeats and the ratio to reverse-KL. Writes reports/bench_train_step.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
from pathlib import Path

import torch

from fdistill.training.config import load_config
from fdistill.training.distill import DistillConfig, distill

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--divergences", nargs="+", default=["reverse_kl", "jensen_shannon", "forward_kl"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--report", default=str(ROOT / "reports/bench_train_step.json"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    args = ap.parse_args()
    if args.steps < 3:
        ap.error(f"--steps {args.steps}: need at least 3 (the first two iterations are warm-up and not timed)")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    times: dict[str, list[float]] = {d: [] for d in args.divergences}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for div in args.divergences:
                out = Path(tmp) / f"{div}_{rep}"
                cfg = load_config(DistillConfig, ROOT / "configs/digits_js.yaml", [
                    f"objective.divergence={div}", "warmup.steps=0", "critic_warmup_steps=0", f"steps={args.steps}",
                    f"batch_size={args.batch_size}", "log_every=1", f"mixed_precision={args.mixed_precision}", f"checkpoint_every={args.steps}",
                    "export=false", f"output_dir={out}"])
                distill(cfg)
                rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
                if not all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float)):
                    raise RuntimeError(f"{div}: non-finite metric in {rows}")
                times[div].append(statistics.median(r["sec_per_step"] for r in rows[2:]))
                print(div, rep, f"{times[div][-1]:.3f} s/it", flush=True)
    base = statistics.median(times[args.divergences[0]])
    report = {"batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats,
              "seconds_per_iteration": {d: statistics.median(v) for d, v in times.items()},
              "runs": times,
              "ratio_to_" + args.divergences[0]: {d: statistics.median(v) / base for d, v in times.items()},
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "mixed_precision": args.mixed_precision, "threads": torch.get_num_threads()}
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
