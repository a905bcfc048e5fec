"""Which f-divergence keeps, and brings back, the small modes of a Gaussian mixture? (issue 2)

Two mixtures with an exact teacher: ``ring8`` (8 modes on a ring, weights ∝ 20:12:8:5:3:2:1.5:1)
and ``two`` (two modes 8 apart, weights 0.9/0.1). Two settings: ``ode`` (the one-step student is
first regressed on teacher ODE pairs, then distilled) and ``recovery`` (the ODE pairs lack the
small modes, 6-7 of the ring and the 0.1 mode: does distribution matching bring them back?).
One warm start per (scenario, setting, seed) serves every divergence, and every divergence runs
the same f-distill objective with one shared configuration.

Diagnostics on the recovery setting, for reverse-KL / JS / forward-KL: the discriminator's ratio
against the exact log p_t/q_t (every run's ``ratio_check``), the same runs with the exact ratio
(``oracle_ratio``) and with more critic steps per generator step (``critic5``), and a run three
times as long (``long``, first seed only).

    .venv/bin/python scripts/gmm_divergences.py            # report run (~22 CPU-min): reports/
    .venv/bin/python scripts/gmm_divergences.py --quick    # smoke run (~1 CPU-min), to /tmp/gmm_quick

Writes ``gmm.json`` (mean ± std over seeds, and every seed), ``gmm_samples.png`` (samples of the
first seed: scenario × setting rows, divergence columns), ``gmm_recovery.png`` (small-mode mass
during the recovery runs) and prints the markdown tables of the README.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from fdistill.gmm import GaussianMixture
from fdistill.io import save_figure
from fdistill.training.toy import distill_gmm, warm_start

DIVERGENCES = ["reverse_kl", "softened_reverse_kl", "jensen_shannon", "squared_hellinger", "forward_kl",
               "jeffreys", "neyman_chi2", "alpha:1.5"]
EXTRA_ALPHAS = ["alpha:-0.5", "alpha:0.5"]
# h is divided by its batch mean, so divergences whose h differ by a constant factor are one algorithm
SAME_RUN = {"alpha:0.5": "squared_hellinger (h = √r/4)", "alpha:1": "forward_kl", "alpha:0": "reverse_kl",
            "alpha:-1": "neyman_chi2 (h = 2/r)"}
DIAGNOSED = ["reverse_kl", "jensen_shannon", "forward_kl"]
DIAGNOSTICS = {"oracle_ratio": {"oracle_discriminator": True}, "critic5": {"critic_steps": 5}}
SHORT = {"reverse_kl": "RKL", "softened_reverse_kl": "sRKL", "jensen_shannon": "JS", "squared_hellinger": "SH",
         "forward_kl": "FKL", "jeffreys": "Jeffreys", "neyman_chi2": "Neyman χ²"}
RATIO_SIGMA = "sigma_0.3"


def scenarios() -> dict[str, tuple[GaussianMixture, tuple[int, ...]]]:
    """name → (mixture, indices of its small modes)."""
    return {
        "ring8": (GaussianMixture.ring(8, radius=4.0, std=0.2, weights=[20, 12, 8, 5, 3, 2, 1.5, 1]), (6, 7)),
        "two": (GaussianMixture([[-4.0, 0.0], [4.0, 0.0]], 0.3, [0.9, 0.1]), (1,)),
    }


def run_metrics(mixture: GaussianMixture, small: tuple[int, ...], metrics: dict) -> dict:
    """The numbers reported per run: mode metrics, small-mode mass (fraction of its true weight), ratio check."""
    weight = float(mixture.weights[list(small)].sum())
    out = {k: metrics[k] for k in ("tv", "modes_covered", "precision", "mode_mass")}
    out["small_mass"] = sum(metrics["mode_mass"][k] for k in small) / weight
    if "ratio_check" in metrics:
        out["ratio_corr"] = metrics["ratio_check"][RATIO_SIGMA]["corr"]
        out["ratio_check"] = metrics["ratio_check"]
    return out


def summarize(per_seed: list[dict]) -> dict:
    """mean and std over seeds of every scalar metric, plus the per-seed records."""
    out: dict = {}
    for key in ("tv", "modes_covered", "precision", "small_mass", "ratio_corr"):
        vals = [m[key] for m in per_seed if key in m]
        if vals:
            t = torch.tensor(vals, dtype=torch.float64)
            out[key] = {"mean": float(t.mean()), "std": float(t.std()) if len(vals) > 1 else 0.0}
    if any("ratio_check" in m for m in per_seed):
        checks = [m["ratio_check"] for m in per_seed if "ratio_check" in m]
        out["ratio_check"] = {
            s: {k: float(torch.tensor([c[s][k] for c in checks]).mean()) for k in checks[0][s]} for s in checks[0]
        }
    out["seeds"] = per_seed
    return out


def history_curve(histories: list[list[dict]], small: tuple[int, ...], weight: float) -> dict:
    """Small-mode mass (fraction of its weight) and precision along training, averaged over seeds."""
    steps = [h["step"] for h in histories[0]]
    mass = [sum(hs[i]["dropped_mass"] for hs in histories) / len(histories) / weight for i in range(len(steps))]
    prec = [sum(hs[i]["precision"] for hs in histories) / len(histories) for i in range(len(steps))]
    return {"step": steps, "small_mass": mass, "precision": prec}


def fmt(s: dict, key: str, digits: int = 3) -> str:
    if key not in s:
        return "–"
    return f"{s[key]['mean']:.{digits}f} ± {s[key]['std']:.{digits}f}"


def markdown(report: dict) -> str:
    same = ", ".join(f"{a} ≡ {b}" for a, b in SAME_RUN.items())
    lines = [f"Not run separately, since h is divided by its batch mean: {same}.", ""]
    for key, block in report["runs"].items():
        lines += [f"**{key}** ({report['steps'][key.split('/')[1]]} steps, {len(report['seeds'])} seeds, "
                  f"mean ± std; small modes {report['scenarios'][key.split('/')[0]]['small_modes']})", "",
                  "| divergence | TV ↓ | modes covered | precision | small-mode mass / true | r corr (σ=0.3) |",
                  "|---|---|---|---|---|---|"]
        for name, s in block.items():
            label = "ODE init (before f-distill)" if name == "init" else SHORT.get(name, name)
            lines.append(f"| {label} | {fmt(s, 'tv')} | {fmt(s, 'modes_covered', 1)} | {fmt(s, 'precision')} | "
                         f"{fmt(s, 'small_mass', 2)} | {fmt(s, 'ratio_corr', 2)} |")
        lines.append("")
    if report.get("diagnostics"):
        lines += ["**Diagnostics** (recovery setting): small-mode mass / true, precision, r corr (σ=0.3)", "",
                  "| scenario | divergence | learned (default) | exact ratio | 5 critic steps | 3× steps (seed 0) |",
                  "|---|---|---|---|---|---|"]
        for key, block in report["diagnostics"].items():
            for name in DIAGNOSED:
                cells = [report["runs"][key].get(name)] + [block.get(f"{name}/{d}") for d in (*DIAGNOSTICS, "long")]
                text = [f"{fmt(c, 'small_mass', 2)}, {c['precision']['mean']:.2f}" + (
                    f", {c['ratio_corr']['mean']:.2f}" if "ratio_corr" in c else "") if c else "–" for c in cells]
                lines.append(f"| {key.split('/')[0]} | {SHORT[name]} | " + " | ".join(text) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_samples(path: Path, samples: dict, mixtures: dict, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(samples)
    cols = ["teacher", "init", *names]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.9 * len(cols), 1.9 * len(rows)), squeeze=False)
    for i, key in enumerate(rows):
        mixture = mixtures[key.split("/")[0]]
        lim = float(mixture.means.abs().max()) + 1.5
        for j, col in enumerate(cols):
            ax = axes[i, j]
            if col == "teacher":
                x = mixture.sample(2000, torch.Generator().manual_seed(0))[0]
            else:
                x = samples[key][col][:2000]
            ax.scatter(x[:, 0], x[:, 1], s=0.5, alpha=0.4, color="C3" if col == "teacher" else "C0", rasterized=True)
            ax.scatter(mixture.means[:, 0], mixture.means[:, 1], s=6, marker="x", color="k", linewidths=0.5)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal")
            if i == 0:
                ax.set_title(SHORT.get(col, col), fontsize=8)
            if j == 0:
                ax.set_ylabel(key, fontsize=8)
    save_figure(fig, path)


def plot_recovery(path: Path, curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(curves)
    fig, axes = plt.subplots(2, len(keys), figsize=(4.5 * len(keys), 6), squeeze=False)
    for j, key in enumerate(keys):
        for i, name in enumerate(curves[key]):
            c = curves[key][name]
            style = dict(color=f"C{i}", label=SHORT.get(name, name), lw=1.2)
            axes[0, j].plot(c["step"], c["small_mass"], **style)
            axes[1, j].plot(c["step"], c["precision"], **style)
        axes[0, j].set_title(key)
        axes[0, j].set_ylabel("small-mode mass / true weight")
        axes[1, j].set_ylabel("precision")
        axes[1, j].set_xlabel("f-distill step")
    axes[0, -1].legend(fontsize=7, ncol=2)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short smoke run (1 seed, few steps, writes to /tmp)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=400, help="f-distill steps of the recovery setting")
    p.add_argument("--ode-steps", type=int, default=300, help="f-distill steps of the ode setting")
    p.add_argument("--divergences", default=",".join(DIVERGENCES), help="comma-separated registry names")
    p.add_argument("--extra-alphas", action="store_true", help=f"also run {', '.join(EXTRA_ALPHAS)}")
    p.add_argument("--no-diagnostics", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="output folder (default reports/, /tmp/gmm_quick with --quick)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    names = args.divergences.split(",") + (EXTRA_ALPHAS if args.extra_alphas else [])
    overrides: dict = {"eval_every": 25}
    steps = {"recovery": args.steps, "ode": args.ode_steps}
    seeds = list(range(args.seeds))
    diagnose = not args.no_diagnostics
    if args.quick:
        seeds, steps = [0], {"recovery": 40, "ode": 20}
        overrides = {"warmup.steps": 300, "critic_warmup_steps": 50, "warmup.ode_pairs": 2048, "warmup.ode_steps": 16,
                     "eval_samples": 4000, "eval_every": 20}
    out = args.out or (Path("/tmp/gmm_quick") if args.quick else Path(__file__).resolve().parents[1] / "reports")
    out.mkdir(parents=True, exist_ok=True)

    mixtures = {k: m for k, (m, _) in scenarios().items()}
    report: dict = {"command": " ".join(["python", *sys.argv]), "seeds": seeds, "steps": steps,
                    "divergences": names, "same_run": SAME_RUN, "overrides": overrides, "scenarios": {}, "runs": {}, "diagnostics": {}}
    samples: dict = {}
    curves: dict = {}
    t_start = time.time()
    for scen, (mixture, small) in scenarios().items():
        report["scenarios"][scen] = {"means": mixture.means.tolist(), "stds": mixture.stds[:, 0].tolist(),
                                     "weights": mixture.weights.tolist(), "small_modes": list(small)}
        weight = float(mixture.weights[list(small)].sum())
        for setting in ("ode", "recovery"):
            key = f"{scen}/{setting}"
            drop = small if setting == "recovery" else ()
            kw = {**overrides, "warmup.drop_modes": list(drop)}
            per_div: dict[str, list] = {n: [] for n in ["init", *names]}
            hist: dict[str, list] = {n: [] for n in names}
            diag: dict[str, list] = {}
            for seed in seeds:
                t0 = time.time()
                warm = warm_start(mixture, seed, **kw)
                per_div["init"].append(run_metrics(mixture, small, warm.metrics))
                print(f"[{time.time() - t_start:6.0f}s] {key} seed {seed}: warm start {time.time() - t0:.1f}s "
                      f"tv {warm.metrics['tv']:.3f}", flush=True)
                for name in names:
                    t0 = time.time()
                    res = distill_gmm(mixture, name, steps[setting], seed, init=warm, **kw)
                    m = run_metrics(mixture, small, res.metrics)
                    per_div[name].append(m)
                    hist[name].append(res.history)
                    if seed == seeds[0]:
                        samples.setdefault(key, {})[name] = res.samples
                        samples[key].setdefault("init", warm.samples)
                    print(f"[{time.time() - t_start:6.0f}s]   {name:20s} {time.time() - t0:5.1f}s tv {m['tv']:.3f} "
                          f"cov {m['modes_covered']} prec {m['precision']:.3f} small {m['small_mass']:.2f}"
                          + (f" rcorr {m['ratio_corr']:.2f}" if "ratio_corr" in m else ""), flush=True)
                    if not (diagnose and setting == "recovery" and name in DIAGNOSED):
                        continue
                    variants = dict(DIAGNOSTICS)
                    if seed == seeds[0]:
                        variants["long"] = {"steps": 3 * steps[setting]}
                    for label, extra in variants.items():
                        if label == "oracle_ratio" and name == "reverse_kl":
                            continue  # h ≡ 1: reverse-KL never reads r, its run would repeat the default one
                        t0 = time.time()
                        extra = dict(extra)
                        res = distill_gmm(mixture, name, extra.pop("steps", steps[setting]), seed, init=warm,
                                          **kw, **extra)
                        m = run_metrics(mixture, small, res.metrics)
                        diag.setdefault(f"{name}/{label}", []).append(m)
                        print(f"[{time.time() - t_start:6.0f}s]     {label:12s} {time.time() - t0:5.1f}s "
                              f"tv {m['tv']:.3f} prec {m['precision']:.3f} small {m['small_mass']:.2f}"
                              + (f" rcorr {m['ratio_corr']:.2f}" if "ratio_corr" in m else ""), flush=True)
            report["runs"][key] = {n: summarize(v) for n, v in per_div.items()}
            if diag:
                report["diagnostics"][key] = {n: summarize(v) for n, v in diag.items()}
            if setting == "recovery":
                curves[key] = {n: history_curve(h, small, weight) for n, h in hist.items()}
    report["curves"] = curves
    report["wall_time_s"] = round(time.time() - t_start, 1)

    (out / "gmm.json").write_text(json.dumps(report, indent=1))
    plot_samples(out / "gmm_samples.png", samples, mixtures, names)
    plot_recovery(out / "gmm_recovery.png", curves)
    print()
    print(markdown(report))
    print(f"wrote {out / 'gmm.json'}, gmm_samples.png, gmm_recovery.png in {report['wall_time_s']:.0f}s")
    return report


if __name__ == "__main__":
    main()
