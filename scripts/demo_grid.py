"""The demo's discriminator settings, chosen by a rule fixed before the runs (issue 10).

    .venv/bin/python scripts/demo_grid.py [--output reports/demo_grid.json] [--work outputs/demo_grid]

Runs ``scripts/demo.py`` (configs/digits_js.yaml, seed 0, 2,000 FID samples) for each of
``objective.t_shift`` ∈ {0, −1} × ``critic_steps`` ∈ {1, 2}: four runs of about 8–15 minutes each on
the 2-core CPU. The rule, written down before any run: a setting *qualifies* when the last quarter of
its f-distill phase has a discriminator loss at least 0.01 below ln 4 (chance) and ``h_spread`` ≥ 0.1;
among qualifying settings the one with the lowest worse-of-two FID ratio (student / teacher, in the
two feature spaces) becomes the demo's default; if none qualifies, the defaults stay as they are and
the goal is reported missed. One seed per setting: the FID ratio moves by about ±0.05 between seeds,
so close calls are reported as such. Resumable (finished settings are read back from their demo.json).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRID = {f"t_shift={t}_critic_steps={c}": [f"objective.t_shift={t}", f"critic_steps={c}"]
        for t in (0.0, -1.0) for c in (1, 2)}
DISC_MARGIN, H_SPREAD_GOAL = 0.01, 0.1


def judge(summary: dict) -> dict:
    """Whether one demo summary qualifies under the rule, and its worse-of-two FID ratio."""
    d = summary.get("discriminator_last_quarter") or {}
    ratios = summary["fid_ratio_student_over_teacher"]
    qualifies = bool(d) and d["disc"] <= math.log(4) - DISC_MARGIN and d["h_spread"] >= H_SPREAD_GOAL
    return {"qualifies": qualifies, "worse_fid_ratio": max(ratios.values()), "fid_ratios": ratios,
            "disc": d.get("disc"), "h_spread": d.get("h_spread"), "r_mean": d.get("r_mean"),
            "train_minutes": summary["student"]["train_seconds"] / 60}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, default=ROOT / "reports/demo_grid.json")
    ap.add_argument("--work", type=Path, default=ROOT / "outputs/demo_grid")
    ap.add_argument("--settings", nargs="+", default=list(GRID), choices=list(GRID), metavar="NAME",
                    help=f"subset of the grid (valid: {', '.join(GRID)})")
    ap.add_argument("demo_args", nargs="*", help="passed to scripts/demo.py after the grid's overrides")
    args = ap.parse_args()

    results = {}
    for name in args.settings:
        out = args.work / name
        if not (out / "demo.json").is_file():
            cmd = [sys.executable, str(ROOT / "scripts/demo.py"), "--output", str(out), *GRID[name], *args.demo_args]
            print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
            subprocess.run(cmd, check=True)
        summary = json.loads((out / "demo.json").read_text())
        results[name] = {"overrides": GRID[name], **judge(summary)}
        r = results[name]
        print(f"{name}: disc {r['disc']:.4f} h_spread {r['h_spread']:.3f} FID ratios "
              f"{', '.join(f'{k} {v:.2f}x' for k, v in r['fid_ratios'].items())} "
              f"({r['train_minutes']:.1f} min) qualifies={r['qualifies']}", flush=True)

    qualifying = {k: v for k, v in results.items() if v["qualifies"]}
    choice = min(qualifying, key=lambda k: qualifying[k]["worse_fid_ratio"]) if qualifying else None
    report = {"rule": __doc__.split("The rule, written down before any run: ")[1].split(" One seed")[0].replace("\n", " "),
              "command": " ".join(["python", "scripts/demo_grid.py", *sys.argv[1:]]),
              "settings": results, "choice": choice}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"choice: {choice or 'none qualifies: defaults unchanged, goal missed'}  -> {args.output}")


if __name__ == "__main__":
    main()
