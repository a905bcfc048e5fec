"""The digits demo judged in feature spaces nobody tuned on: which f-distill recipe beats its own warm-up.

    .venv/bin/python scripts/demo_quality.py [--runs NAME ...] [--work outputs/demo_quality]
        [--report reports/demo_quality.json] [--num-samples 2000] [--sample-seeds 0 1 2]

THE SELECTION RULE (written into this file before any run of the study, 2026-12-06 03:08 UTC):

Models. The shipped digits teacher (EDM Heun, 18 steps = 35 NFE); the ODE warm-up alone (the
demo's student after its 300 regression steps on 1,000 teacher ODE pairs, before f-distill: one
shared warm-up, training seed 0, from which every recipe continues); and each f-distill recipe of
``RUNS`` (configs/digits_js.yaml as of the study's start plus that recipe's overrides, training seed 0).

Scores. Every model draws 2,000 class-balanced samples (labels 0..9 cycling) at each of three
sample seeds (0, 1, 2) and is scored against all 1,797 real digits in four feature spaces:
"classifier" and "classifier_b" (ours: the two digits classifiers this project trained), and two
the project did not design, "pixels" (the raw 16×16 image as a 256-d vector) and "sklearn_mlp"
(the hidden ReLU activations of scikit-learn's ``MLPClassifier`` with its default architecture, fit
with random_state 0 on scikit-learn's own 8×8 ``load_digits`` images; our samples are average-pooled
to 8×8 and scaled to its 0..16 range; fixed before any student was scored and never changed after).
Per space: FID, KID (unbiased), precision, recall, density and coverage (k = 5 nearest neighbours);
per model: class accuracy by the shipped classifier. A model's value is the mean over its three
sample seeds; its *spread* is max − min over them.

Qualifying ("beats its warm-up"). A recipe qualifies when all of these hold:
  1. its mean FID is at or below the warm-up's in both independent spaces (pixels, sklearn_mlp);
  2. its mean FID is at or below the warm-up's in at least one of ours (classifier, classifier_b);
  3. in both independent spaces, its mean recall and its mean coverage are each not below the
     warm-up's by more than the larger of the two models' spreads of that metric.
Shipping. Only a recipe whose training after the ODE warm-up costs at most 1.1× today's default in
optimizer updates (critic warm-up + f-distill: 100·2 + 100·(2 + 1) = 500, so at most 550) may become
the default: `make demo` must stay within its 15 minutes. Costlier recipes are judged and reported,
not shipped. The shipped default is the eligible qualifying recipe with the lowest *worst-space FID
ratio* (max over the four spaces of its mean FID / the teacher's mean FID). If none qualifies, that
is reported as the goal missed, and the eligible recipe with the fewest failed conditions (each
space of conditions 1 and 3 and each metric counted once, condition 2 once) ships, ties broken by
the lower worst-space ratio. The goal "≤ 1.3× the teacher in every space" is reported for every
model, met or missed; it does not enter the choice beyond the worst-space ratio.

The runs. One factor at a time against today's default (``default``): the GAN term's weight,
the discriminator's levels, the critic's pace (critic steps, head learning rate), the training-time
shift, the generator's learning rate, and the f-distill length (50, 100, 300 steps). Recipes that
combine factors may be added to ``RUNS`` after the factor runs, each marked with when it was
added; every recipe run is judged by the rule above and none is left out of the report. The recipe
then shipped is re-run as `make demo` does (its samples at seed 1234) and, time permitting, the
warm-up and the shipped recipe are repeated on training seed 1 as a confirmation that is reported,
not used to choose.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock

from fdistill.eval import EXTERNAL_SPACES, FEATURE_SPACES, sklearn_mlp_predict
from fdistill.eval.pipeline_eval import generate, image_metrics, pipeline_sampler
from fdistill.io import atomic_save_file, atomic_write_text
from fdistill.pipelines import FDistillPipeline
from fdistill.teachers import load_digits_teacher
from fdistill.training.checkpoint import latest_checkpoint
from fdistill.training.config import load_config
from fdistill.training.distill import ODE_PAIRS_FILE, DistillConfig, distill

ROOT = Path(__file__).resolve().parents[1]
OURS, EXTERNAL = tuple(FEATURE_SPACES), tuple(EXTERNAL_SPACES)
SPACES = (*OURS, *EXTERNAL)
METRICS = ("fid", "kid", "precision", "recall", "density", "coverage")
K = 5
CHECK_SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
COST_LIMIT = 1.1  # × today's default, in optimizer updates after the ODE warm-up
RULE_WRITTEN = "2026-12-06 03:08 UTC"

# Today's default (configs/digits_js.yaml when the study began), pinned so that the study reproduces
# whatever the shipped config later becomes.
BASE = ("seed=0", "num_threads=1", "objective.divergence=jensen_shannon", "objective.gan_weight=3.0e-3",
        "objective.t_shift=-1.0", "discriminator.feature_modules=[down_blocks.0,down_blocks.1,mid_block,up_blocks.0,up_blocks.1]",
        "warmup.steps=300", "warmup.ode_pairs=1000", "warmup.ode_steps=12", "optim.lr_generator=2.0e-5",
        "optim.lr_critic=1.0e-4", "optim.lr_head=1.0e-3", "batch_size=32", "critic_steps=2",
        "critic_warmup_steps=100", "steps=100", "ema_decay=0.99", "checkpoint_every=50")


@dataclass(frozen=True)
class Run:
    """One recipe: ``overrides`` on top of ``BASE``, continued from ``start``.

    ``start``: "warmup" (the shared warm-up's checkpoint), "pairs" (its own warm-up on the shared ODE
    pairs: a checkpoint restores the optimizers' learning rates and the head's shape, so a recipe that
    changes either cannot continue from the shared one; the warm-up itself is the same computation),
    or "<run>@<step>" (that run's checkpoint: a longer or shorter f-distill phase of the same run).
    """

    overrides: tuple[str, ...] = ()
    start: str = "warmup"
    what: str = ""
    added: str = "factor run, with the rule"


COMBINED = "combination, added after the factor runs (2026-12-06 05:28 UTC)"
RUNS: dict[str, Run] = {
    "default": Run(what="today's default: GAN weight 3e-3, five levels, 2 critic steps, head lr 1e-3, "
                        "t_shift -1, generator lr 2e-5, 100 steps"),
    "gan_1e-3": Run(("objective.gan_weight=1.0e-3",), what="GAN weight 1e-3"),
    "gan_0": Run(("objective.gan_weight=0.0",), what="no GAN term (the head still gives r for h)"),
    "heads_mid": Run(("discriminator.feature_modules=[mid_block]",), "pairs", "one level (mid_block)"),
    "critic_1": Run(("critic_steps=1",), what="1 critic step per generator step"),
    "critic_4": Run(("critic_steps=4",), what="4 critic steps per generator step"),
    "lr_head_1e-4": Run(("optim.lr_head=1.0e-4",), "pairs", "head learning rate 1e-4"),
    "t_shift_0": Run(("objective.t_shift=0.0",), what="t_shift 0"),
    "lr_gen_5e-6": Run(("optim.lr_generator=5.0e-6",), "pairs", "generator learning rate 5e-6"),
    "steps_50": Run(("steps=50",), "default@450", "50 f-distill steps (the default run's checkpoint)"),
    "steps_300": Run(("steps=300",), "default@500", "300 f-distill steps (the default run, continued)"),
    "t0_critic4": Run(("objective.t_shift=0.0", "critic_steps=4", "critic_warmup_steps=25", "steps=75"),
                      what="t_shift 0, 4 critic steps; 25 critic warm-up and 75 f-distill steps keep the cost",
                      added=COMBINED),
    "t0_lrgen": Run(("objective.t_shift=0.0", "optim.lr_generator=5.0e-6"), "pairs",
                    "t_shift 0, generator learning rate 5e-6", COMBINED),
    "t0_critic4_lrgen": Run(("objective.t_shift=0.0", "critic_steps=4", "critic_warmup_steps=25", "steps=75",
                             "optim.lr_generator=5.0e-6"), "pairs",
                            "t_shift 0, 4 critic steps, generator learning rate 5e-6; 25 + 75 steps", COMBINED),
}

# Not recipes: the critic warm-up alone from the shared warm-up (no generator step), to see whether the fake
# score has learnt the student's distribution when the first distribution-matching step is taken.
CRITIC_ONLY: dict[str, tuple[str, ...]] = {
    "t_shift_-1_lr_critic_1e-4": (),
    "t_shift_0_lr_critic_1e-4": ("objective.t_shift=0.0",),
    "t_shift_-1_lr_critic_2e-5": ("optim.lr_critic=2.0e-5",),
    "t_shift_0_lr_critic_2e-5": ("objective.t_shift=0.0", "optim.lr_critic=2.0e-5"),
}


def updates_after_warmup(c: DistillConfig) -> int:
    """Optimizer updates after the ODE warm-up: critic warm-up, then critic steps + 1 generator step per step."""
    return c.critic_warmup_steps * c.critic_steps + c.steps * (c.critic_steps + 1)


def teacher_sampler(steps: int):
    """The shipped digits teacher's EDM Heun sampler (``steps`` steps: 2·steps − 1 NFE), clamped to [−1, 1]."""
    den = load_digits_teacher()

    def sample(labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        z = torch.randn(len(labels), 1, 16, 16, generator=g)
        return den.schedule.sample(lambda x, t: den(x, t, labels), z, steps).clamp(-1, 1)

    return sample


@dataclass
class Study:
    """Where the study's models live and how they are made and scored.

    ``<work>/teacher`` holds the teacher's samples; the warm-up and the recipes of training seed 0 live in
    ``<work>/<name>``, those of another training seed (a confirmation) in ``<work>/seed<k>/<name>``.
    Samples and scores are cached next to each model, so a second call only reads them.
    """

    work: Path
    num_samples: int = 2000
    sample_seeds: tuple[int, ...] = (0, 1, 2)
    teacher_steps: int = 18  # EDM Heun: 35 NFE
    train_seed: int = 0
    overrides: tuple[str, ...] = ()  # the command line's own, after every run's (smoke tests only)

    def folder(self, name: str) -> Path:
        root = self.work if self.train_seed == 0 or name == "teacher" else self.work / f"seed{self.train_seed}"
        return root / "critic_only" / name if name in CRITIC_ONLY else root / name

    def config(self, name: str, extra: tuple[str, ...] = ()) -> DistillConfig:
        """``name``'s config: configs/digits_js.yaml, ``BASE``, the run's overrides, the command line's, ``extra``."""
        own = RUNS[name].overrides if name in RUNS else (*CRITIC_ONLY[name], "steps=0") if name in CRITIC_ONLY else ()
        overrides = [*BASE, f"seed={self.train_seed}", *own, *self.overrides, *extra, f"output_dir={self.folder(name)}"]
        return load_config(DistillConfig, ROOT / "configs/digits_js.yaml", overrides)

    def critic_only(self, name: str) -> dict:
        """Critic warm-up ``CRITIC_ONLY[name]`` from the shared warm-up, then :meth:`fake_score_check`."""
        run = self.folder(name)
        seed_folder(run, self.folder("warmup"), self.config("warmup").warmup.steps)
        distill(self.config(name, ("export=false",)), resume="latest")
        return self.fake_score_check(name)

    def train_warmup(self) -> None:
        """The shared ODE warm-up: 300 regression steps, no critic, exported as a pipeline."""
        if (self.folder("warmup") / "pipeline").is_dir():
            return
        distill(self.config("warmup", ("steps=0", "critic_warmup_steps=0", "checkpoint_every=300")), resume="latest")

    def train(self, name: str) -> None:
        """Train recipe ``name`` from its start (resuming where it stopped), and time it once."""
        run, start = self.folder(name), RUNS[name].start
        if (run / "pipeline").is_dir():
            return
        if start == "warmup":
            seed_folder(run, self.folder("warmup"), self.config("warmup").warmup.steps)
        elif start == "pairs":
            seed_folder(run, self.folder("warmup"), None)
        else:
            source, step = start.split("@")
            self.train(source)
            seed_folder(run, self.folder(source), int(step))
        tic = time.perf_counter()
        distill(self.config(name), resume="latest")
        if not (run / "train_seconds.json").is_file():  # a resumed run's time is not the recipe's
            atomic_write_text(run / "train_seconds.json", json.dumps(time.perf_counter() - tic) + "\n")

    def ready(self, name: str) -> bool:
        if name == "teacher":
            return all(self.sample_path(name, s).is_file() for s in self.sample_seeds)
        return (self.folder(name) / "pipeline").is_dir()

    def sample_path(self, name: str, seed: int) -> Path:
        return self.folder(name) / f"samples_n{self.num_samples}_seed{seed}.safetensors"

    def samples(self, name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (n, 1, 16, 16), labels (n,)) of model ``name`` at sample seed ``seed``, cached."""
        from safetensors.torch import load_file

        path = self.sample_path(name, seed)
        if path.is_file():
            saved = load_file(str(path))
            return saved["images"], saved["labels"]
        sampler = teacher_sampler(self.teacher_steps) if name == "teacher" else pipeline_sampler(
            FDistillPipeline.from_pretrained(self.folder(name) / "pipeline"))
        images, labels, ips = generate(sampler, self.num_samples, 250, seed=seed)
        atomic_save_file({"images": images, "labels": labels}, path, metadata={"images_per_second": str(ips)})
        return images, labels

    def score(self, name: str, seed: int) -> dict:
        """Every metric of model ``name`` at one sample seed, in every space (cached next to its samples)."""
        path = self.folder(name) / f"metrics_n{self.num_samples}_seed{seed}_k{K}.json"
        if path.is_file():
            return json.loads(path.read_text())
        images, labels = self.samples(name, seed)
        m = image_metrics(images, labels, feature_spaces=SPACES, k=K)
        out = {"by_features": m["by_features"], "class_accuracy": m["class_accuracy"],
               "class_accuracy_sklearn_mlp": (sklearn_mlp_predict(images) == labels).float().mean().item()}
        atomic_write_text(path, json.dumps(out, indent=1) + "\n")
        return out

    @torch.no_grad()
    def fake_score_check(self, name: str, n: int = 500) -> dict:
        """Is the fake score a better model of the student than the teacher? (cached next to the run)

        On n samples x0 of the student of the run's last checkpoint and at each σ of ``CHECK_SIGMAS``:
        the denoising error E‖x̂0(x_σ) − x0‖² of the fake score and of the teacher. The fake score learns the
        student's distribution, so where it is no better than the teacher, x̂0_q − x̂0_p (the direction of every
        distribution-matching step) is its own error rather than the student's distance from the teacher.
        """
        from fdistill.training.checkpoint import load_states
        from fdistill.training.distill import FDistill

        run = self.folder(name)
        path = run / "fake_score_check.json"
        if path.is_file():
            return json.loads(path.read_text())
        ckpt = latest_checkpoint(run)
        method = FDistill(self.config(name), torch.device("cpu"))
        student, fake = method.modules["student"], method.modules["fake_score"]
        load_states(ckpt, {"student": student, "fake_score": fake})
        g = torch.Generator().manual_seed(0)
        labels = torch.arange(n) % 10
        x0 = student(torch.randn(n, 1, 16, 16, generator=g), labels)
        rows = []
        for sigma in CHECK_SIGMAS:
            t = torch.full((n,), sigma)
            x_t = method.schedule.add_noise(x0, torch.randn(x0.shape, generator=g), t)
            mse_p = (method.teacher.denoiser(x_t, t, labels, guidance_scale=1.0) - x0).pow(2).mean().item()
            mse_q = (fake(x_t, t, labels) - x0).pow(2).mean().item()
            rows.append({"sigma": sigma, "mse_teacher": mse_p, "mse_fake": mse_q, "fake_over_teacher": mse_q / mse_p})
        out = {"checkpoint_step": int(ckpt.name.split("-")[1]), "num_samples": n, "by_sigma": rows}
        atomic_write_text(path, json.dumps(out, indent=1) + "\n")
        return out


def seed_folder(run: Path, source: Path, step: int | None) -> None:
    """Start ``run`` from ``source``'s checkpoint at ``step`` (None: only its ODE pairs), logs up to there included."""
    if latest_checkpoint(run) is not None:
        return  # already started: resume
    run.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / ODE_PAIRS_FILE, run / ODE_PAIRS_FILE)
    if step is None:
        return
    ckpt = source / f"checkpoint-{step}"
    if not ckpt.is_dir():
        raise SystemExit(f"{ckpt} is missing: the study keeps it only while {source.name} is the newest run there")
    if (source / "metrics.jsonl").is_file():
        shutil.copy2(source / "metrics.jsonl", run / "metrics.jsonl")  # the trainer truncates it to `step`
    shutil.copytree(ckpt, run / ckpt.name)


def summarize(per_seed: dict[str, dict]) -> dict:
    """Mean and spread (max − min) over sample seeds of every metric in every space, and of class accuracy."""
    runs = list(per_seed.values())

    def stats(values: list[float]) -> dict[str, float]:
        return {"mean": sum(values) / len(values), "spread": max(values) - min(values)}

    out = {space: {key: stats([r["by_features"][space][key] for r in runs]) for key in METRICS} for space in SPACES}
    for key in ("class_accuracy", "class_accuracy_sklearn_mlp"):
        out[key] = stats([r[key] for r in runs])
    return out


def judge(model: dict, warmup: dict) -> dict:
    """The rule of this file's docstring for one recipe: its conditions and which of them failed."""
    s, w = model["summary"], warmup["summary"]
    fid = lambda m, space: m["summary"][space]["fid"]["mean"]
    conditions = {f"1_fid_{space}": fid(model, space) <= fid(warmup, space) for space in EXTERNAL}
    conditions["2_fid_one_of_ours"] = any(fid(model, space) <= fid(warmup, space) for space in OURS)
    for space in EXTERNAL:
        for key in ("recall", "coverage"):
            tolerance = max(s[space][key]["spread"], w[space][key]["spread"])
            conditions[f"3_{key}_{space}"] = s[space][key]["mean"] >= w[space][key]["mean"] - tolerance
    return {"conditions": conditions, "failed": [k for k, ok in conditions.items() if not ok],
            "qualifies": all(conditions.values())}


def choose(models: dict[str, dict]) -> tuple[str | None, bool]:
    """(shipped recipe, whether it qualifies) by the rule; None while no eligible recipe is judged."""
    recipes = {k: m for k, m in models.items() if m.get("judgement") and m["eligible"]}
    if not recipes:
        return None, False
    qualifying = [k for k, m in recipes.items() if m["judgement"]["qualifies"]]
    if qualifying:
        return min(qualifying, key=lambda k: recipes[k]["worst_fid_ratio"]), True
    return min(recipes, key=lambda k: (len(recipes[k]["judgement"]["failed"]), recipes[k]["worst_fid_ratio"])), False


def build_report(study: Study) -> dict:
    """Every model of ``study`` that is ready, scored, summarised and judged."""
    from demo import discriminator_summary  # scripts/ is on sys.path when this file runs as a script

    default_cost = updates_after_warmup(study.config("default"))
    models: dict[str, dict] = {}
    for name in ("teacher", "warmup", *RUNS):
        if not study.ready(name):
            continue
        entry: dict = {"per_seed": {str(s): study.score(name, s) for s in study.sample_seeds}}
        entry["summary"] = summarize(entry["per_seed"])
        if name in RUNS:
            c, run = study.config(name), RUNS[name]
            entry.update(what=run.what, overrides=list(run.overrides), start=run.start, added=run.added,
                         updates_after_warmup=updates_after_warmup(c),
                         eligible=updates_after_warmup(c) <= COST_LIMIT * default_cost,
                         discriminator_last_quarter=discriminator_summary(study.folder(name) / "metrics.jsonl"),
                         fake_score_check=study.fake_score_check(name))
        if (study.folder(name) / "train_seconds.json").is_file():
            entry["train_seconds"] = json.loads((study.folder(name) / "train_seconds.json").read_text())
        models[name] = entry
    critic_only = {name: json.loads((study.folder(name) / "fake_score_check.json").read_text())
                   for name in CRITIC_ONLY if (study.folder(name) / "fake_score_check.json").is_file()}
    report = {"rule": __doc__.split("THE SELECTION RULE ")[1].split("\n\nThe runs.")[0],
              "rule_written": RULE_WRITTEN, "runs_plan": __doc__.split("The runs. ")[1].strip(),
              "command": " ".join(["python", "scripts/demo_quality.py", *sys.argv[1:]]),
              "settings": {"config": "configs/digits_js.yaml", "base_overrides": list(BASE),
                           "train_seed": study.train_seed, "extra_overrides": list(study.overrides),
                           "num_samples": study.num_samples, "sample_seeds": list(study.sample_seeds), "k": K,
                           "teacher": f"EDM Heun, {study.teacher_steps} steps ({2 * study.teacher_steps - 1} NFE)",
                           "reference": "all 1,797 digits", "spaces_ours": list(OURS),
                           "spaces_external": {k: EXTERNAL_SPACES[k] for k in EXTERNAL}},
              "models": models, "fake_score_after_critic_warmup": critic_only}
    teacher, warmup = models.get("teacher"), models.get("warmup")
    if teacher is None:
        return report
    for name, m in models.items():
        m["fid_ratio_to_teacher"] = {space: m["summary"][space]["fid"]["mean"] / teacher["summary"][space]["fid"]["mean"]
                                     for space in SPACES}
        m["worst_fid_ratio"] = max(m["fid_ratio_to_teacher"].values())
        m["goal_1.3_every_space"] = m["worst_fid_ratio"] <= 1.3
        if name in RUNS and warmup is not None:
            m["judgement"] = judge(m, warmup)
    choice, qualifies = choose(models)
    report["choice"] = {"recipe": choice, "qualifies": qualifies,
                        "goal_1.3_every_space": choice is not None and models[choice]["goal_1.3_every_space"]}
    return report


def save_png(report: dict, study: Study, path: Path) -> None:
    """One row per model, in the report's order: two samples of each class 0..9 (the first sample seed)."""
    from torchvision.utils import save_image

    rows = [study.samples(name, study.sample_seeds[0])[0][:20] for name in report["models"]]
    save_image((torch.cat(rows) + 1) / 2, str(path), nrow=20, padding=1)


def print_table(report: dict) -> None:
    """The README's table: every model × every space (FID mean ± spread, ratio, P / R / density / coverage)."""
    models = report["models"]
    dec = {s: 4 if models["teacher"]["summary"][s]["fid"]["mean"] < 0.3 else 3 for s in SPACES}
    print("\n| model | " + " | ".join(f"{s}: FID ± spread (× teacher) | P / R / D / C" for s in SPACES)
          + " | class acc (ours / sklearn) | beats warm-up |")
    print("|---|" + "---|---|" * len(SPACES) + "---|---|")
    for name, m in models.items():
        cells = []
        for s in SPACES:
            v = m["summary"][s]
            cells.append(f"{v['fid']['mean']:.{dec[s]}f} ± {v['fid']['spread']:.{dec[s]}f} "
                         f"({m['fid_ratio_to_teacher'][s]:.2f}×)")
            cells.append(" / ".join(f"{v[k]['mean']:.3f}" for k in ("precision", "recall", "density", "coverage")))
        j = m.get("judgement")
        verdict = "-" if j is None else "yes" if j["qualifies"] else "no: " + ", ".join(j["failed"])
        acc = f"{m['summary']['class_accuracy']['mean']:.3f} / {m['summary']['class_accuracy_sklearn_mlp']['mean']:.3f}"
        print(f"| {name} | {' | '.join(cells)} | {acc} | {verdict} |")
    c = report["choice"]
    print(f"\nchoice: {c['recipe']} (qualifies: {c['qualifies']}, ≤ 1.3× in every space: {c['goal_1.3_every_space']})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS), metavar="NAME",
                    help=f"recipes to train and sample in this call (valid: {', '.join(RUNS)}); the report "
                         "holds every model finished in --work")
    ap.add_argument("--critic-only", nargs="*", default=list(CRITIC_ONLY), choices=list(CRITIC_ONLY), metavar="NAME",
                    help=f"critic warm-ups without a generator step to check (valid: {', '.join(CRITIC_ONLY)})")
    ap.add_argument("--teacher", action=argparse.BooleanOptionalAction, default=True,
                    help="sample the teacher in this call (--no-teacher: leave it to another worker)")
    ap.add_argument("--work", type=Path, default=ROOT / "outputs/demo_quality")
    ap.add_argument("--report", type=Path, default=ROOT / "reports/demo_quality.json")
    ap.add_argument("--num-samples", type=int, default=2000)
    ap.add_argument("--sample-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--teacher-steps", type=int, default=18, help="the teacher's Heun steps (18 = 35 NFE)")
    ap.add_argument("--train-seed", type=int, default=0,
                    help="training seed of the warm-up and the recipes (other than 0: a confirmation, in "
                         "<work>/seed<k>; pass another --report)")
    ap.add_argument("overrides", nargs="*", help="config overrides after every run's own (smoke tests only: the "
                                                 "rule judges the runs as listed)")
    args = ap.parse_intermixed_args()
    torch.set_num_threads(1)
    study = Study(args.work, args.num_samples, tuple(args.sample_seeds), args.teacher_steps, args.train_seed,
                  tuple(args.overrides))
    if args.teacher:
        for s in study.sample_seeds:
            study.samples("teacher", s)
    study.train_warmup()
    for s in study.sample_seeds:
        study.samples("warmup", s)
    for name in args.critic_only:
        print(f"== critic only, {name}: {study.critic_only(name)}", flush=True)
    for name in args.runs:
        print(f"== {name}: {RUNS[name].what}", flush=True)
        study.train(name)
        for s in study.sample_seeds:
            study.score(name, s)
    with FileLock(str(args.report) + ".lock"):  # workers on other runs may share the report
        report = build_report(study)
        atomic_write_text(args.report, json.dumps(report, indent=1) + "\n")
        if "teacher" in report["models"]:
            save_png(report, study, args.report.with_suffix(".png"))
    if "teacher" in report["models"]:
        print_table(report)


if __name__ == "__main__":
    main()
