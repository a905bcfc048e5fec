"""Does the divergence matter on video? HiAR students per divergence over seeds, from shared warm-ups.

    python scripts/hiar_divergences.py [--divergences reverse_kl jensen_shannon forward_kl alpha:1.5]
        [--seeds 0 1] [--steps 100] [--frames 48] [--config configs/moving_digits_hiar.yaml] [key=value ...]

The rule, fixed before the runs: every divergence of a seed resumes that seed's warm-up checkpoint
(trajectories, block-causal ODE regression; the divergences with a discriminator head share a second one,
made the same way with the head in it), trains ``--steps`` self-rollout iterations with the same
overrides, and is scored on the same videos (classes 0..9 × ``--videos-per-class`` seeds, ``--frames``
latent frames, the student's saved defaults and a rolling window past its training clip) by
``fdistill.eval.video.moving_digits_report``: per-frame accuracy, drift (first − last ``--edge``
frames) and motion (centroid speed / real). A divergence differs from reverse-KL when its paired
difference (same seed, same warm-up) is larger than twice its standard error over seeds; with
fewer than 3 seeds the report says the differences are not tested.

The default overrides carry what made the image discriminator learn, except its low-σ times: a critic
warm-up, the head's own learning rate and two critic updates per generator update; the DM loss and the
critic keep the video recipe's times (``dm_time.kind=uniform``). With the low-σ times as well
(``dm_time.kind=schedule objective.t_shift=-1``, the first study, ``reports/hiar_divergences_low_sigma.json``)
the discriminator learned within 35 critic steps but reverse-KL students collapsed to chance accuracy on both
seeds. The discriminator's health is read from each run's ``metrics.jsonl``: the last quarter's mean
``disc`` loss (chance: ln 4 = 1.386), ``h_spread`` and ``r_mean``.

Resumable: runs under ``--work`` resume from their checkpoints; runs in the report are kept and
skipped when its settings match. Writes ``reports/hiar_divergences.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from filelock import FileLock

from fdistill.data.moving_digits import MovingDigits
from fdistill.divergences import get_divergence
from fdistill.eval.video import moving_digits_report
from fdistill.io import atomic_write_text, read_jsonl
from fdistill.pipelines.hiar_student import load_hiar_student
from fdistill.teachers import load_moving_digits_teacher
from fdistill.training.checkpoint import latest_checkpoint, start_from
from fdistill.training.config import load_config, parse_args_with_overrides
from fdistill.training.hiar import HiARConfig, distill_video

ROOT = Path(__file__).resolve().parents[1]
DISCRIMINATOR = ["critic_warmup_steps=50", "critic_steps=2", "optim.lr_head=1e-3"]
MEASURES = ("frame_accuracy", "drift", "motion_ratio")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--divergences", nargs="+", default=["reverse_kl", "jensen_shannon", "forward_kl", "alpha:1.5"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--config", default=str(ROOT / "configs/moving_digits_hiar.yaml"))
    ap.add_argument("--steps", type=int, default=100, help="self-rollout iterations after the warm-ups")
    ap.add_argument("--frames", type=int, default=48, help="latent frames of the scored videos")
    ap.add_argument("--videos-per-class", type=int, default=3)
    ap.add_argument("--edge", type=int, default=12, help="frames of the first / last segment (drift)")
    ap.add_argument("--window", type=int, default=8, help="rolling window past the training clip")
    ap.add_argument("--no-discriminator-settings", action="store_true",
                    help=f"leave out the default overrides {' '.join(DISCRIMINATOR)}")
    ap.add_argument("--work", default=str(ROOT / "outputs/hiar_study"))
    ap.add_argument("--report", default=str(ROOT / "reports/hiar_divergences.json"))
    ap.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. batch_size=2")
    return ap


def discriminator_health(run: Path) -> dict[str, float]:
    """Last-quarter means of the logged discriminator statistics (empty without a discriminator)."""
    rows = [r for _, r in read_jsonl(run / "metrics.jsonl") if "disc" in r or "h_spread" in r]
    rows = rows[len(rows) * 3 // 4:]
    out = {}
    for key in ("disc", "h_spread", "r_mean"):
        vals = [r[key] for r in rows if key in r]
        if vals:
            out[f"{key}_last_quarter"] = sum(vals) / len(vals)
    return out


def paired(report: dict, base: str = "reverse_kl") -> dict:
    """Per divergence and measure: mean ± std (and standard error) of (it − base) over the shared seeds."""
    ref = report["runs"].get(base, {})
    out: dict = {}
    for name, runs in report["runs"].items():
        seeds = sorted(set(runs) & set(ref), key=int)
        if name == base or not seeds:
            continue
        out[name] = {"seeds": [int(s) for s in seeds]}
        for key in MEASURES:
            d = torch.tensor([runs[s]["video"][key] - ref[s]["video"][key] for s in seeds], dtype=torch.float64)
            std = float(d.std()) if len(d) > 1 else float("nan")
            se = std / math.sqrt(len(d)) if len(d) > 1 else float("nan")
            verdict = ("untested (< 3 seeds)" if len(d) < 3 else
                       "differs" if abs(float(d.mean())) > 2 * se else "within seed noise")
            out[name][key] = {"mean": float(d.mean()), "std": std, "stderr": se, "per_seed": d.tolist(),
                              "verdict": verdict}
    return out


def study_command(report: dict, args: argparse.Namespace) -> str:
    """The one command that makes the whole report, whichever workers (``--seeds``/``--divergences``) ran it."""
    divs = [d for d in build_parser().get_default("divergences") if d in report["runs"]]
    divs += sorted(d for d in report["runs"] if d not in divs and not d.startswith("ode_regression"))
    seeds = sorted({int(s) for runs in report["runs"].values() for s in runs})
    argv = ["python", "scripts/hiar_divergences.py", "--divergences", *divs, "--seeds", *map(str, seeds)]
    for flag in ("steps", "frames", "videos_per_class", "edge", "window"):
        if getattr(args, flag) != build_parser().get_default(flag):
            argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.no_discriminator_settings:
        argv.append("--no-discriminator-settings")
    if args.config != build_parser().get_default("config"):
        argv += ["--config", report["settings"]["config"]]
    return " ".join(argv + list(args.overrides))


def main() -> None:
    args = parse_args_with_overrides(build_parser())
    torch.set_num_threads(1)
    for div in args.divergences:
        get_divergence(div)  # names the valid ones before any work
    overrides = ([] if args.no_discriminator_settings else DISCRIMINATOR) + list(args.overrides)
    base = load_config(HiARConfig, args.config, overrides)
    config = Path(args.config).resolve()
    settings = {"config": str(config.relative_to(ROOT)) if config.is_relative_to(ROOT) else str(config),
                "overrides": overrides, "steps": args.steps, "frames": args.frames,
                "videos_per_class": args.videos_per_class, "edge": args.edge, "window": args.window}
    report_path = Path(args.report)
    report: dict = {"settings": settings, "runs": {}}
    if report_path.is_file():
        old = json.loads(report_path.read_text())
        if old.get("settings") != settings:
            raise SystemExit(f"{report_path} holds a study with other settings: pass another --report or move it")
        report["runs"] = old["runs"]
        for key, value in old.items():  # notes and the like written beside the runs
            report.setdefault(key, value)
    work = Path(args.work)

    def run_dir(seed: int | str, div: str) -> Path:
        return work / f"seed{seed}" / div.replace(":", "_")

    for name, runs in report["runs"].items():  # the discriminator's health, read again from every run's log
        for seed, row in runs.items():
            if "discriminator" in row and (run_dir(seed, name) / "metrics.jsonl").is_file():
                row["discriminator"] = discriminator_health(run_dir(seed, name))

    teacher = load_moving_digits_teacher(base.teacher.path)
    data = dict(teacher.metadata["data"]["kwargs"])
    labels = torch.arange(10).repeat(args.videos_per_class)
    real = MovingDigits(**{**data, "num_videos": len(labels), "num_frames": args.frames, "seed": 10_000})
    real_speed = moving_digits_report(*real.tensors(), edge=args.edge, layout="latent")["centroid_speed"]
    report["real"] = {"centroid_speed": real_speed}

    def score(asset: Path) -> dict:
        pipe = load_hiar_student(asset)
        pipe.set_progress_bar_config(disable=True)
        window = pipe.config.window or (args.window if args.frames > pipe.config.num_frames else None)
        videos = []
        for s in range(args.videos_per_class):
            out = pipe(labels=list(range(10)), num_frames=args.frames, window=window, output_type="latent",
                       generator=torch.Generator().manual_seed(s)).frames
            videos.append(out.float().clamp(-1, 1))
        m = moving_digits_report(torch.cat(videos), labels, edge=args.edge, real_speed=real_speed, layout="latent")
        return {k: m[k] for k in ("frame_accuracy", "accuracy_first", "accuracy_last", "drift", "motion_ratio",
                                  "frozen_fraction") if k in m}

    def save(name: str | None = None, seed: int | None = None, row: dict | None = None) -> None:
        with FileLock(str(report_path) + ".lock"):  # workers on other seeds may share this report
            if report_path.is_file():
                for other, runs in json.loads(report_path.read_text())["runs"].items():
                    report["runs"].setdefault(other, {}).update(
                        {s: r for s, r in runs.items() if s not in report["runs"].get(other, {})})
            if row is not None:
                report["runs"].setdefault(name, {})[str(seed)] = row
            report["minus_reverse_kl"] = paired(report)
            report["command"] = study_command(report, args)
            atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")

    def record(name: str, seed: int, row: dict) -> None:
        save(name, seed, row)
        v = row["video"]
        print(f"{name} seed {seed}: accuracy {v['frame_accuracy']:.3f}, drift {v.get('drift', float('nan')):.3f}, "
              f"motion {v['motion_ratio']:.2f}x, {row.get('discriminator', {})}", flush=True)

    def warm_start(seed: int, div: str) -> Path:
        """This seed's warm-up checkpoint for ``div``: one per seed, and one more with a discriminator head for
        the divergences that need one (the head's parameters are in the checkpoint and its optimizer)."""
        head = load_config(HiARConfig, args.config, [*overrides, f"objective.divergence={div}"]).objective \
            .needs_discriminator
        warm, name = (work / f"seed{seed}" / "warmup_head", "ode_regression_head") if head else \
            (work / f"seed{seed}" / "warmup", "ode_regression")
        # One warm-up config per kind, whichever divergence asks first (the ODE regression reads neither
        # the divergence nor the head; every divergence that reads r builds the same head).
        div = "jensen_shannon" if head else "reverse_kl"
        tic = time.perf_counter()
        distill_video(load_config(HiARConfig, args.config, [*overrides, f"seed={seed}", f"objective.divergence={div}",
                                                             "steps=0", "critic_warmup_steps=0", f"output_dir={warm}",
                                                             f"checkpoint_every={max(base.warmup.steps, 1)}"]),
                      resume="latest")
        if str(seed) not in report["runs"].get(name, {}):
            record(name, seed, {"video": score(warm / "hiar_student.safetensors"),
                                "train_seconds": time.perf_counter() - tic})
        return latest_checkpoint(warm)

    for seed in args.seeds:
        for div in args.divergences:
            if str(seed) in report["runs"].get(div, {}):
                continue
            run = run_dir(seed, div)
            start_from(run, warm_start(seed, div))  # every divergence starts from this seed's warm-up
            tic = time.perf_counter()
            distill_video(load_config(HiARConfig, args.config, [*overrides, f"seed={seed}",
                                                                 f"objective.divergence={div}", f"steps={args.steps}",
                                                                 f"output_dir={run}"]), resume="latest")
            record(div, seed, {"video": score(run / "hiar_student.safetensors"),
                               "discriminator": discriminator_health(run),
                               "train_seconds": time.perf_counter() - tic})
    save()  # the health read again from the logs, the paired differences and the whole study's command
    print(json.dumps(report["minus_reverse_kl"], indent=2))


if __name__ == "__main__":
    main()
