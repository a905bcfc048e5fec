"""Does f-distill keep a narrow mode? A family of random mixtures with one mode 5× narrower (issue 10).

Each mixture (:func:`~fdistill.training.toy.random_mixture`, seeded by its index) has 6 modes of
std ≈ 0.25 at random places and weights, one of them with std 0.05. Per mixture and setting,
one warm start (the one-step generator regressed on exact-teacher ODE pairs: the ODE-pair
reference) serves every divergence. Settings change one factor of the baseline each:

- ``baseline``: the toy's defaults (generator MLP of depth 3, 1,500 ODE-regression steps);
- ``deep_generator``: ``generator_depth=5`` (capacity of the generator alone);
- ``long_warm_start``: 6,000 ODE-regression steps (init);
- ``low_sigma``: ``objective_t_shift=-1`` (training σ e^-1 times smaller, median 0.18: more weight
  where the narrow mode is resolved; shares the baseline's warm start).

Reported per (setting, divergence), mean ± std over the mixtures: TV to the true masses (samples
within 3σ of a mode, :func:`~fdistill.training.toy.mode_metrics`), TV of the nearest-mode masses,
the narrow mode's mass over its true weight (within 3σ, and nearest-mode) and its width (1 = right;
the broad modes' mean width beside it).

    .venv/bin/python scripts/gmm_narrow_modes.py            # report run (60 min on the shared 2-core CPU): reports/
    .venv/bin/python scripts/gmm_narrow_modes.py --quick    # smoke run (~1 min), to /tmp/gmm_narrow_quick

Writes ``gmm_narrow_modes.json`` (summaries, every run, the mixtures), ``gmm_narrow_modes.png``
(samples of the first mixtures) and prints the markdown table of the README.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from fdistill.gmm import GaussianMixture, random_mixture
from fdistill.io import save_figure
from fdistill.training.toy import distill_gmm, warm_start

DIVERGENCES = ["reverse_kl", "jensen_shannon", "forward_kl", "alpha:1.5"]
SETTINGS: dict[str, dict] = {
    "baseline": {},
    "deep_generator": {"generator_depth": 5},
    "long_warm_start": {"warmup.steps": 6000},
    "low_sigma": {"objective.t_shift": -1.0},
}
SHORT = {"reverse_kl": "RKL", "jensen_shannon": "JS", "forward_kl": "FKL", "init": "ODE pairs only (init)"}
KEYS = ("tv", "tv_nearest", "narrow_mass", "narrow_mass_nearest", "narrow_width", "other_width", "precision")


def narrow_metrics(mixture: GaussianMixture, metrics: dict) -> dict:
    """The reported numbers of one run, from :func:`mode_metrics` output."""
    k = int(mixture.stds[:, 0].argmin())
    w = float(mixture.weights[k])
    others = [v for j, v in enumerate(metrics["mode_width"]) if j != k]
    return {
        "tv": metrics["tv"], "tv_nearest": metrics["tv_nearest"], "precision": metrics["precision"],
        "narrow_mass": metrics["mode_mass"][k] / w, "narrow_mass_nearest": metrics["mode_mass_nearest"][k] / w,
        "narrow_width": metrics["mode_width"][k], "other_width": sum(others) / len(others),
        "modes_covered": metrics["modes_covered"],
    }


def summarize(runs: list[dict]) -> dict:
    """mean and std over mixtures of every reported number (NaN widths, of an emptied mode, skipped)."""
    out = {}
    for key in (*KEYS, "modes_covered"):
        t = torch.tensor([r[key] for r in runs if not math.isnan(r[key])], dtype=torch.float64)
        out[key] = {"mean": float(t.mean()) if len(t) else float("nan"),
                    "std": float(t.std()) if len(t) > 1 else 0.0, "n": len(t)}
    return out


def fmt(s: dict, key: str, digits: int = 3) -> str:
    return f"{s[key]['mean']:.{digits}f} ± {s[key]['std']:.{digits}f}"


def markdown(report: dict) -> str:
    n = len(report["mixtures"])
    lines = [f"{n} random mixtures (6 modes, one 5× narrower), {report['steps']} f-distill steps, mean ± std "
             "over mixtures. Narrow mass = its mass / true weight; width 1 = right.", "",
             "| setting | divergence | TV (3σ) ↓ | TV (nearest) ↓ | narrow mass (3σ) | narrow mass (nearest) | "
             "narrow width | broad width |", "|---|---|---|---|---|---|---|---|"]
    for setting, block in report["summary"].items():
        for name, s in block.items():
            lines.append(f"| {setting} | {SHORT.get(name, name)} | {fmt(s, 'tv')} | {fmt(s, 'tv_nearest')} | "
                         f"{fmt(s, 'narrow_mass', 2)} | {fmt(s, 'narrow_mass_nearest', 2)} | "
                         f"{fmt(s, 'narrow_width', 2)} | {fmt(s, 'other_width', 2)} |")
    return "\n".join(lines)


def plot_samples(path: Path, samples: dict, mixtures: list[GaussianMixture], names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(samples)
    cols = ["teacher", "init", *names]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.9 * len(cols), 1.9 * len(rows)), squeeze=False)
    for i, (index, setting) in enumerate(rows):
        mixture = mixtures[index]
        k = int(mixture.stds[:, 0].argmin())
        for j, col in enumerate(cols):
            ax = axes[i, j]
            x = mixture.sample(3000, torch.Generator().manual_seed(0))[0] if col == "teacher" else \
                samples[index, setting][col][:3000]
            ax.scatter(x[:, 0], x[:, 1], s=0.3, alpha=0.4, color="C3" if col == "teacher" else "C0", rasterized=True)
            ax.add_patch(plt.Circle(mixture.means[k].tolist(), 3 * float(mixture.stds[k, 0]), fill=False, lw=0.6,
                                    color="k"))
            ax.set_xlim(-5.5, 5.5)
            ax.set_ylim(-5.5, 5.5)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal")
            if i == 0:
                ax.set_title(SHORT.get(col, col) if col != "init" else "init", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"mixture {index}\n{setting}", fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run (2 mixtures, few steps, writes to /tmp)")
    p.add_argument("--mixtures", type=int, default=8)
    p.add_argument("--steps", type=int, default=300, help="f-distill steps")
    p.add_argument("--divergences", default=",".join(DIVERGENCES), help="comma-separated registry names")
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    p.add_argument("--plot-mixtures", type=int, default=2, help="mixtures shown in the PNG")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default reports/, /tmp/gmm_narrow_quick with --quick)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    names, settings = args.divergences.split(","), args.settings.split(",")
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise SystemExit(f"unknown setting(s) {unknown}; valid: {', '.join(SETTINGS)}")
    common: dict = {"eval_every": 50}
    count, steps, specs = args.mixtures, args.steps, {s: SETTINGS[s] for s in settings}
    if args.quick:  # the long warm start stays 4× the (shortened) default one
        count, steps = 2, 20
        common = {"warmup.steps": 300, "critic_warmup_steps": 50, "warmup.ode_pairs": 2048, "warmup.ode_steps": 16,
                  "eval_samples": 4000, "eval_every": 10}
        specs = {s: {k: 1200 if k == "warmup.steps" else v for k, v in kw.items()} for s, kw in specs.items()}
    out = args.out or (Path("/tmp/gmm_narrow_quick") if args.quick else Path(__file__).resolve().parents[1] / "reports")
    out.mkdir(parents=True, exist_ok=True)

    mixtures = [random_mixture(i) for i in range(count)]
    report: dict = {"command": " ".join(["python", *sys.argv]), "steps": steps, "divergences": names,
                    "settings": specs, "common": common,
                    "mixtures": [{"seed": i, "means": m.means.tolist(), "stds": m.stds[:, 0].tolist(),
                                  "weights": m.weights.tolist(), "narrow_mode": int(m.stds[:, 0].argmin())}
                                 for i, m in enumerate(mixtures)], "runs": {}}
    runs: dict = {s: {n: [] for n in ["init", *names]} for s in settings}
    samples: dict = {}
    t_start = time.time()
    for index, mixture in enumerate(mixtures):
        warm_cache: dict = {}  # settings that differ only in the objective share a warm start
        for setting in settings:
            kw = dict(common, **specs[setting])
            warm_kw = {k: v for k, v in kw.items() if not k.startswith("objective.")}
            key = json.dumps(warm_kw, sort_keys=True)
            if key not in warm_cache:
                warm_cache[key] = warm_start(mixture, index, **warm_kw)
            warm = warm_cache[key]
            m = narrow_metrics(mixture, warm.metrics)
            runs[setting]["init"].append(m)
            print(f"[{time.time() - t_start:6.0f}s] mixture {index} {setting:16s} init  tv {m['tv']:.3f} "
                  f"narrow {m['narrow_mass']:.2f}/{m['narrow_mass_nearest']:.2f} width {m['narrow_width']:.2f}",
                  flush=True)
            if index < args.plot_mixtures:
                samples[index, setting] = {"init": warm.samples}
            for name in names:
                res = distill_gmm(mixture, name, steps, index, init=warm, **kw)
                m = narrow_metrics(mixture, res.metrics)
                runs[setting][name].append(m)
                if index < args.plot_mixtures:
                    samples[index, setting][name] = res.samples
                print(f"[{time.time() - t_start:6.0f}s]   {name:16s} tv {m['tv']:.3f} nearest {m['tv_nearest']:.3f} "
                      f"narrow {m['narrow_mass']:.2f}/{m['narrow_mass_nearest']:.2f} width {m['narrow_width']:.2f} "
                      f"broad {m['other_width']:.2f}", flush=True)
    report["runs"] = runs
    report["summary"] = {s: {n: summarize(v) for n, v in block.items()} for s, block in runs.items()}
    report["wall_time_s"] = round(time.time() - t_start, 1)

    (out / "gmm_narrow_modes.json").write_text(json.dumps(report, indent=1))
    plot_samples(out / "gmm_narrow_modes.png", samples, mixtures, names)
    print()
    print(markdown(report))
    print(f"wrote {out / 'gmm_narrow_modes.json'} and gmm_narrow_modes.png in {report['wall_time_s']:.0f}s")
    return report


if __name__ == "__main__":
    main()
