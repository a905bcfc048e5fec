"""Teacher vs one-step students on digits, per divergence over seeds: FID, precision, recall in two feature spaces.

    .venv/bin/python scripts/digits_divergences.py [--divergences reverse_kl jensen_shannon forward_kl alpha:1.5]
        [--seeds 0 1 2] [--steps 1000] [--num-samples 2000] [--config configs/digits_js.yaml] [key=value ...]

Per seed, the ODE-pair warm-up runs once (``<work>/seed<s>/warmup``) and every divergence resumes from
its checkpoint, which is exactly what an uninterrupted run would compute (resume is bit-exact); the
warm-up-only student is the regression baseline f-distill must beat. Every model is scored in both
feature spaces of ``fdistill.eval.FEATURE_SPACES`` (the shipped CNN classifier and ``classifier_b``,
another architecture and seed), against the teacher sampled in the same run. Resumable twice over:
runs in ``--work`` resume from their checkpoints, and every run already in the report is kept and
skipped when the report's settings match this command's, so a study can be finished over several
sessions or machines from the committed report alone (seeds and divergences may be added; a report
made with other settings is refused, not overwritten). The report is written after each run,
atomically, under a file lock: workers on different ``--seeds`` may share one report.

Writes reports/digits_divergences.json (every run, mean ± std over seeds per model, and each model's FID
minus reverse-KL's on the same seed: the seeds share a warm-up, so the paired difference is the ranking) and
reports/digits_divergences_<model>.png (samples of the first seed). ``reports/digits.json`` is the
previous study's report (one seed, one feature space, 200 steps).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from filelock import FileLock

from fdistill.divergences import get_divergence
from fdistill.eval import FEATURE_SPACES
from fdistill.eval.pipeline_eval import generate, image_metrics, pipeline_sampler
from fdistill.io import atomic_write_text
from fdistill.pipelines import FDistillPipeline
from fdistill.teachers import load_digits_teacher
from fdistill.training.checkpoint import latest_checkpoint, start_from
from fdistill.training.config import load_config, parse_args_with_overrides
from fdistill.training.distill import DistillConfig, distill

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("fid", "precision", "recall")
LABELS = {"teacher": "teacher (Heun)", "ode_regression": "ODE-pair regression only", "reverse_kl": "reverse-KL",
          "jensen_shannon": "Jensen–Shannon", "forward_kl": "forward-KL"}  # others print as named


def save_grid(images: torch.Tensor, path: Path, nrow: int = 10) -> None:
    from torchvision.utils import save_image

    save_image((images[:100] + 1) / 2, str(path), nrow=nrow, padding=1)


def student_sampler(pipeline_dir: Path):
    return pipeline_sampler(FDistillPipeline.from_pretrained(pipeline_dir))


def teacher_sampler(steps: int):
    den = load_digits_teacher()

    def sample(labels, g):
        z = torch.randn(len(labels), 1, 16, 16, generator=g)
        return den.sample(z, steps, labels, clamp=1.0)

    return sample, den.schedule.nfe(steps)


def summarize(runs: dict[str, dict]) -> dict:
    """Mean ± std over seeds of FID/precision/recall per feature space, and of the FID ratio to the teacher."""
    out: dict = {}
    for space in FEATURE_SPACES:
        for key in (*METRICS, "fid_vs_teacher"):
            vals = torch.tensor([r["by_features"][space][key] for r in runs.values()], dtype=torch.float64)
            out.setdefault(space, {})[key] = {"mean": float(vals.mean()),
                                              "std": float(vals.std()) if len(vals) > 1 else 0.0}
    return out


def paired(report: dict, base: str = "reverse_kl") -> dict:
    """Per model, FID minus ``base``'s FID on the same seed (same warm-up), mean ± std over the shared seeds.

    Every divergence of a seed starts from that seed's warm-up, so the seed's share of the FID cancels
    in the difference; a mean difference of several standard errors is a ranking, the unpaired
    mean ± std above mostly measures how far seeds move FID.
    """
    ref = report["models"].get(base, {}).get("runs", {})
    out: dict = {}
    for name, m in report["models"].items():
        seeds = sorted(set(m["runs"]) & set(ref), key=int)
        if name in ("teacher", base) or not seeds:
            continue
        out[name] = {"seeds": [int(s) for s in seeds]}
        for space in FEATURE_SPACES:
            d = torch.tensor([m["runs"][s]["by_features"][space]["fid"] - ref[s]["by_features"][space]["fid"]
                              for s in seeds], dtype=torch.float64)
            out[name][space] = {"mean": float(d.mean()), "std": float(d.std()) if len(d) > 1 else 0.0,
                                "per_seed": [float(x) for x in d]}
    return out


def study_command(report: dict) -> str:
    """The one command that reproduces every run of ``report``, whichever workers each ran a part of it."""
    s = report["settings"]
    divs = [m for m in report["models"] if m not in ("teacher", "ode_regression")]
    parts = ["python", "scripts/digits_divergences.py", "--divergences", *divs,
             "--seeds", *(str(x) for x in report["seeds"]), "--steps", str(s["steps"]),
             "--num-samples", str(s["num_samples"]), "--teacher-steps", str(s["teacher_steps"]),
             "--config", s["config"], *s["overrides"]]
    return " ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--divergences", nargs="+", default=["reverse_kl", "jensen_shannon", "forward_kl", "alpha:1.5"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--config", default=str(ROOT / "configs/digits_js.yaml"))
    ap.add_argument("--steps", type=int, default=1000, help="f-distill generator steps after the warm-ups")
    ap.add_argument("--num-samples", type=int, default=2000)
    ap.add_argument("--teacher-steps", type=int, default=18, help="Heun steps of the teacher (NFE = 2N-1)")
    ap.add_argument("--work", default=str(ROOT / "outputs/digits_study"))
    ap.add_argument("--report", default=str(ROOT / "reports/digits_divergences.json"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. critic_steps=4")
    return ap


def main() -> None:
    args = parse_args_with_overrides(build_parser())
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    for div in args.divergences:
        get_divergence(div)  # names the valid ones before any work
    work, reports = Path(args.work), Path(args.report).parent
    reports.mkdir(parents=True, exist_ok=True)
    base = load_config(DistillConfig, args.config, args.overrides)
    spaces = tuple(FEATURE_SPACES)
    config = Path(args.config).resolve()
    settings = {"config": str(config.relative_to(ROOT)) if config.is_relative_to(ROOT) else str(config),
                "overrides": args.overrides, "steps": args.steps, "num_samples": args.num_samples,
                "teacher_steps": args.teacher_steps, "feature_spaces": list(spaces)}
    command = " ".join(["python", "scripts/digits_divergences.py", *sys.argv[1:]])  # this worker's
    report: dict = {"settings": settings, "seeds": args.seeds, "command": command, "models": {}}
    report_path = Path(args.report)
    if report_path.is_file():
        old = json.loads(report_path.read_text())
        if old.get("settings") != settings:
            raise SystemExit(f"{report_path} holds a study with other settings ({old.get('settings')}, here "
                             f"{settings}): pass another --report, or move it away to start over")
        report["models"] = old["models"]
        report["seeds"] = sorted(set(old.get("seeds", [])) | set(args.seeds))
        done = {f"{m} seed {s}" for m, v in old["models"].items() if m != "teacher" for s in v["runs"]}
        print(f"{report_path}: keeping {len(done)} finished runs ({', '.join(sorted(done)) or 'none'})", flush=True)
    prefix = report_path.stem

    def evaluate(sampler, grid: Path | None) -> dict:
        images, labels, ips = generate(sampler, args.num_samples, 250, seed=1234)
        m = image_metrics(images, labels, feature_spaces=spaces)
        m.pop("class_histogram", None)
        if grid is not None:
            save_grid(images, grid)
        return {**m, "images_per_second": ips}

    def record(model: str, seed: int, result: dict) -> None:
        teacher = report["models"]["teacher"]["runs"]["all"]
        for space in spaces:
            result["by_features"][space]["fid_vs_teacher"] = (result["by_features"][space]["fid"]
                                                              / teacher["by_features"][space]["fid"])
        with FileLock(str(report_path) + ".lock"):  # workers on other seeds may share this report
            if report_path.is_file():
                for name, m in json.loads(report_path.read_text())["models"].items():
                    report["models"].setdefault(name, {"runs": {}})["runs"].update(m["runs"])
            runs = report["models"].setdefault(model, {"runs": {}})["runs"]
            runs[str(seed)] = result
            for m in report["models"].values():
                if "all" not in m["runs"]:
                    m["summary"] = summarize(m["runs"])
            report["seeds"] = sorted({int(s) for name, m in report["models"].items() if name != "teacher"
                                      for s in m["runs"]})
            report["fid_minus_reverse_kl"] = paired(report)
            report["command"] = study_command(report)
            write(report, report_path)
        f = {s: round(result["by_features"][s]["fid"], 4) for s in spaces}
        print(f"{model} seed {seed}: FID {f}", flush=True)

    def recorded(model: str, seed: int) -> bool:
        return str(seed) in report["models"].get(model, {}).get("runs", {})

    if "teacher" not in report["models"]:
        sampler, nfe = teacher_sampler(args.teacher_steps)
        teacher = evaluate(sampler, reports / f"{prefix}_teacher.png")
        report["models"]["teacher"] = {"runs": {"all": {**teacher, "nfe": nfe}}}
        write(report, report_path)
    for seed in args.seeds:
        if recorded("ode_regression", seed) and all(recorded(div, seed) for div in args.divergences):
            continue
        warm = work / f"seed{seed}" / "warmup"
        tic = time.perf_counter()
        distill(load_config(DistillConfig, args.config, [*args.overrides, f"seed={seed}", "steps=0",
                                                          "critic_warmup_steps=0", f"output_dir={warm}",
                                                          f"checkpoint_every={base.warmup.steps}"]), resume="latest")
        first = seed == min(report["seeds"])
        if not recorded("ode_regression", seed):
            result = evaluate(student_sampler(warm / "pipeline"), reports / f"{prefix}_ode_regression.png"
                              if first else None)
            record("ode_regression", seed, {**result, "nfe": 1, "train_seconds": time.perf_counter() - tic,
                                            "command": command})
        ckpt = latest_checkpoint(warm)
        for div in args.divergences:
            if recorded(div, seed):
                continue
            run = work / f"seed{seed}" / div.replace(":", "_")
            start_from(run, ckpt)  # every divergence starts from this seed's warm-up
            tic = time.perf_counter()
            distill(load_config(DistillConfig, args.config, [*args.overrides, f"seed={seed}",
                                                              f"objective.divergence={div}", f"steps={args.steps}",
                                                              f"output_dir={run}"]), resume="latest")
            grid = reports / f"{prefix}_{div.replace(':', '_')}.png" if first else None
            result = evaluate(student_sampler(run / "pipeline"), grid)
            record(div, seed, {**result, "nfe": 1, "distill_steps": args.steps,
                               "train_seconds": time.perf_counter() - tic, "command": command})
    with FileLock(str(report_path) + ".lock"):  # every worker's runs; a report of older code gets the study's command
        report = json.loads(report_path.read_text())
        whole = study_command(report)
        if report.get("command") != whole:
            report["command"] = whole
            write(report, report_path)
    print_table(report, spaces)


def _mean_std(mean: float, std: float, n: int, decimals: int, sign: str = "") -> str:
    """``mean ± std`` at ``decimals``; the mean alone for one seed."""
    return f"{mean:{sign}.{decimals}f}" + (f" ± {std:.{decimals}f}" if n > 1 else "")


def print_table(report: dict, spaces: tuple[str, ...]) -> None:
    """The README's markdown tables: mean ± std over seeds per model and feature space, then the paired differences.

    FIDs get 3 decimals, or 4 in a space where the teacher's FID is below 0.3 (classifier_b's are near 0.04).
    """
    teacher = report["models"]["teacher"]["runs"]["all"]["by_features"]
    dec = {s: 3 if teacher[s]["fid"] >= 0.3 else 4 for s in spaces}
    head = " | ".join(f"FID ({s}) | P / R ({s}) | FID / teacher ({s})" for s in spaces)
    print(f"\n| model | NFE | seeds | {head} |")
    print("|---|---|---|" + "---|" * 3 * len(spaces))
    for name, m in report["models"].items():
        runs = list(m["runs"].values())
        cells = []
        for s in spaces:
            if "summary" in m:
                v = m["summary"][s]
                cells += [_mean_std(v["fid"]["mean"], v["fid"]["std"], len(runs), dec[s]),
                          f"{v['precision']['mean']:.3f} / {v['recall']['mean']:.3f}",
                          f"{v['fid_vs_teacher']['mean']:.2f}×"]
            else:
                v = runs[0]["by_features"][s]
                cells += [f"{v['fid']:.{dec[s]}f}", f"{v['precision']:.3f} / {v['recall']:.3f}", "1.00×"]
        print(f"| {LABELS.get(name, name)} | {runs[0]['nfe']} | {len(runs) if 'summary' in m else '-'} | {' | '.join(cells)} |")
    print(f"\n| model − reverse-KL, same seed | seeds | {' | '.join(f'ΔFID ({s})' for s in spaces)} |")
    print("|---|---|" + "---|" * len(spaces))
    for name, d in paired(report).items():
        cells = [_mean_std(d[s]["mean"], d[s]["std"], len(d["seeds"]), dec[s], sign="+") for s in spaces]
        print(f"| {LABELS.get(name, name)} | {len(d['seeds'])} | {' | '.join(cells)} |")


def write(report: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
