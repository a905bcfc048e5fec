"""f-distill on Gaussian mixtures, where the teacher score and the student's q_t are exact.

``distill_gmm`` runs the same :class:`~fdistill.objective.FDistillObjective` on the same loop
(:mod:`fdistill.training.trainer`) and the same method skeleton
(:class:`~fdistill.training.matching.DistributionMatching`) as the image trainer, with MLPs: a one-step
student z → x, an online fake score, and a discriminator on (x_t, t). The student starts from teacher
probability-flow-ODE pairs (as DMD and CausVid do), optionally with some modes dropped from those pairs
(``warmup.drop_modes``), so what distribution matching then does to the mode masses is measurable.

The mixture maths and measures live in :mod:`fdistill.gmm`, the exact-ratio diagnostics (an oracle
discriminator, :func:`~fdistill.gmm_diagnostics.ratio_check`) in :mod:`fdistill.gmm_diagnostics`; this
file is the method: its config and its losses.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fdistill.denoisers import Denoiser
from fdistill.gmm import GaussianMixture, GaussianMixtureDenoiser, mode_metrics
from fdistill.gmm_diagnostics import OracleDiscriminator, ratio_check
from fdistill.io import atomic_write_text
from fdistill.models.gmm_nets import Discriminator, FourierMLP, mlp
from fdistill.objective import ObjectiveConfig
from fdistill.schedules import EDMSchedule

from .cache import cached_tensors
from .checkpoint import read_metrics, truncate_metrics
from .config import ConfigError, build
from .matching import DiscriminatorSpec, DistributionMatching, MatchingConfig, OptimSpec, RegressionWarmup
from .trainer import Draw, Update, train, trainable

__all__ = ["GMMConfig", "GMMDistill", "GMMResult", "WarmStart", "distill_gmm", "warm_start"]


@dataclass
class GMMWarmup(RegressionWarmup):
    """The regression warm-up on ``ode_pairs`` exact teacher ODE pairs (``ode_steps`` Heun steps), with the
    modes ``drop_modes`` removed from the teacher the pairs come from."""

    steps: int = 1500
    lr: float = 1e-3
    batch_size: int = 256
    ode_pairs: int = 8192
    ode_steps: int = 48
    drop_modes: list[int] = field(default_factory=list)


@dataclass
class GMMDiscriminatorSpec(DiscriminatorSpec):
    """The toy's discriminator: an MLP with Fourier features on the raw (x_t, t) (no teacher features)."""

    head: str = "mlp"
    hidden: int = 128


@dataclass
class GMMObjective(ObjectiveConfig):
    """The objective's settings with the toy's default: no GAN term (the divergences alone)."""

    gan_weight: float = 0.0


@dataclass
class GMMOptim(OptimSpec):
    """The toy's Adam settings: one rate for student and critic, β2 = 0.99, no gradient clipping."""

    lr_generator: float = 1e-3
    lr_critic: float = 1e-3
    lr_head: float = 1e-3
    beta2: float = 0.99
    grad_clip: float = 0.0


@dataclass
class GMMConfig(MatchingConfig):
    """Toy run settings; ``objective`` holds the divergence and the f-distill knobs.

    Training σ is log-normal, ln σ ~ N(p_mean, p_std²): the default median σ ≈ 0.5 puts most draws
    where modes 0.2–0.3 wide and 3–8 apart are told apart (``p_mean=None`` centres it on the data
    std, where p_t ≈ q_t and the ratio carries no signal). ``oracle_discriminator``: the exact
    log p_t/q_t (q_t from ``oracle_ref`` student samples) instead of a learned discriminator (a
    diagnostic). ``check_samples``: student samples behind :func:`~fdistill.gmm_diagnostics.ratio_check`.
    Metrics and samples come from an EMA of the student (``ema_decay``): at ``optim.lr_generator`` 1e-3
    the raw student oscillates while the fake score catches up.
    """

    RENAMED = {"warmup_steps": "warmup.steps", "fake_warmup_steps": "critic_warmup_steps",
               "ode_pairs": "warmup.ode_pairs", "ode_steps": "warmup.ode_steps", "drop_modes": "warmup.drop_modes",
               "lr_generator": "optim.lr_generator", "lr_critic": "optim.lr_critic",
               "disc_width": "discriminator.hidden"}

    objective: GMMObjective = field(default_factory=GMMObjective)
    steps: int = 1500
    batch_size: int = 256
    warmup: GMMWarmup = field(default_factory=GMMWarmup)
    critic_steps: int = 2
    critic_warmup_steps: int = 500
    discriminator: GMMDiscriminatorSpec = field(default_factory=GMMDiscriminatorSpec)
    optim: GMMOptim = field(default_factory=GMMOptim)
    ema_decay: float = 0.98
    checkpoint_every: int = 1_000_000  # the toy keeps its final checkpoint only
    output_dir: str = ""  # "": a temporary folder
    progress: bool = False
    width: int = 128
    generator_depth: int = 3
    oracle_discriminator: bool = False
    oracle_ref: int = 4096
    p_mean: float | None = -0.7
    p_std: float = 1.5
    eval_samples: int = 20000
    eval_every: int = 100
    check_samples: int = 8192

    def __post_init__(self):
        self.log_every = self.eval_every
        super().__post_init__()
        if self.generator_depth < 1:
            raise ValueError(f"generator_depth must be >= 1 (hidden layers of the student MLP), got "
                             f"{self.generator_depth}")

    def warm_settings(self) -> dict[str, Any]:
        """What shapes the warm start: one made with these settings serves every divergence of a seed."""
        keep = ("width", "generator_depth", "p_mean", "p_std", "batch_size", "critic_warmup_steps", "seed")
        return {**{k: getattr(self, k) for k in keep}, "warmup": dataclasses.asdict(self.warmup),
                "discriminator_hidden": self.discriminator.hidden, "lr_critic": self.optim.lr_critic}


@dataclass
class WarmStart:
    """Networks after ODE-pair regression (student) and critic warm-up (fake score, discriminator), and the
    student's samples then. Divergence-independent, so one warm start serves every divergence of a seed."""

    settings: dict
    student: dict
    fake_score: dict
    discriminator: dict
    samples: Tensor
    metrics: dict

    def tensors(self) -> dict[str, Tensor]:
        parts = {"student": self.student, "fake_score": self.fake_score, "discriminator": self.discriminator}
        return {**{f"{p}.{k}": v for p, state in parts.items() for k, v in state.items()}, "samples": self.samples}

    @classmethod
    def from_tensors(cls, settings: dict, data: dict[str, Tensor], mixture: GaussianMixture) -> WarmStart:
        def part(prefix: str) -> dict[str, Tensor]:
            return {k[len(prefix) + 1:]: v for k, v in data.items() if k.startswith(prefix + ".")}

        return cls(settings, part("student"), part("fake_score"), part("discriminator"), data["samples"],
                   mode_metrics(mixture, data["samples"]))


@dataclass
class GMMResult:
    samples: Tensor
    metrics: dict
    history: list[dict] = field(default_factory=list)
    student: nn.Module | None = None


def _schedule(mixture: GaussianMixture, cfg: GMMConfig) -> EDMSchedule:
    data_std = float(torch.sqrt((mixture.weights[:, None] * (mixture.means**2 + mixture.stds**2)).sum(0).mean()))
    p_mean = math.log(data_std) if cfg.p_mean is None else cfg.p_mean
    return EDMSchedule(sigma_data=data_std, sigma_max=20 * data_std, P_mean=p_mean, P_std=cfg.p_std)


def _ode_pairs(mixture: GaussianMixture, schedule: EDMSchedule, spec: GMMWarmup, dim: int,
               g: torch.Generator) -> tuple[Tensor, None, Tensor]:
    target = mixture
    if spec.drop_modes:
        w = mixture.weights.clone()
        w[list(spec.drop_modes)] = 0
        target = GaussianMixture(mixture.means, mixture.stds, w)
    z = torch.randn(spec.ode_pairs, dim, generator=g)
    return z, None, schedule.sample(GaussianMixtureDenoiser(target, schedule), z, spec.ode_steps)


@torch.no_grad()
def _sample(student: nn.Module, n: int, dim: int, seed: int) -> Tensor:
    return student(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)))


def unwrap(module: nn.Module) -> nn.Module:
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(module)


class GMMDistill(DistributionMatching):
    """f-distill of a one-step MLP student onto a Gaussian mixture (the shared phase ladder: regression
    warm-up, critic warm-up with one critic update a step, distribution matching). ``init`` (a
    :class:`WarmStart`) replaces the first two phases."""

    features_from = None  # the discriminator reads (x_t, t) itself

    def __init__(self, mixture: GaussianMixture, cfg: GMMConfig, init: WarmStart | None):
        self.mixture, self.config, self.dim = mixture, cfg, mixture.means.shape[1]
        self.schedule = _schedule(mixture, cfg)
        self.score_teacher = GaussianMixtureDenoiser(mixture, self.schedule)
        student = mlp(self.dim, self.dim, cfg.width, cfg.generator_depth)
        fake = Denoiser(FourierMLP(self.dim, self.dim, cfg.width), self.schedule, condition_key=None)
        disc = Discriminator(self.schedule, self.dim, cfg.discriminator.hidden)
        if init is not None:
            student.load_state_dict(init.student)
            fake.load_state_dict(init.fake_score)
            disc.load_state_dict(init.discriminator)
        else:  # the warm-up trains the critic for every divergence alike (JS needs the discriminator)
            cfg = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, divergence="jensen_shannon"))
            self.config = cfg
        self.oracle = None
        if cfg.oracle_discriminator and init is not None:
            disc = self.oracle = OracleDiscriminator(mixture, student, self.dim, cfg.oracle_ref, cfg.seed + 2)
        trained_disc = disc if cfg.objective.needs_discriminator and self.oracle is None else None
        self.optimizers = {"warmup": torch.optim.Adam(student.parameters(), lr=cfg.warmup.lr),
                           **self.build_critic(student, fake, trained_disc, cfg.optim)}
        self.disc = disc if cfg.objective.needs_discriminator else None
        self.ema, self.device = {"ema": "student"}, torch.device("cpu")
        warm = 0 if init is not None else cfg.warmup.steps
        critic_warm = 0 if init is not None else cfg.critic_warmup_steps
        self.phases = self.matching_phases(warm, cfg.batch_size, critic_warm, cfg.steps, cfg.critic_steps,
                                           cfg.batch_size, critic_warmup_updates=1)
        self.pairs = (_ode_pairs(mixture, self.schedule, cfg.warmup, self.dim, torch.Generator().manual_seed(cfg.seed))
                      if warm else None)
        self.makes_warm_start = init is None
        self.history: list[dict] = []
        self.result: GMMResult | None = None
        self.warm_start: WarmStart | None = None

    def generate(self, z: Tensor, condition: Tensor | None) -> Tensor:
        return self.modules["student"](z)

    def prepared(self) -> None:
        super().prepared()
        if self.oracle is not None:
            self.objective.discriminator = self.oracle
            self.states["oracle"] = self.oracle  # a resumed run draws the same reference samples

    def before_update(self, update: Update) -> None:
        if self.oracle is not None:
            # the exact ratio has nothing to train in critic updates; the student has moved since its last samples
            self.oracle.skip = update.name != "generator"
            if update.name == "generator":
                self.oracle.refresh()

    def _noise(self, draw: Draw) -> tuple[Tensor, Tensor]:
        return draw(lambda n, g: self.objective.noise(n, (self.dim,), g))

    def critic_loss(self, draw: Draw) -> tuple[Tensor, dict[str, Tensor]]:
        with torch.no_grad():
            x0 = self.modules["student"](draw.randn(self.dim))
        real = draw(lambda n, g: self.mixture.sample(n, g)[0])
        t, eps = self._noise(draw)
        t_real, eps_real = self._noise(draw)
        return self.objective.critic_loss(x0, None, t, eps, real, None, t_real, eps_real)

    def generator_loss(self, draw: Draw) -> tuple[Tensor, dict[str, Tensor]]:
        x0 = self.modules["student"](draw.randn(self.dim))
        return self.objective.generator_loss(x0, None, *self._noise(draw))

    # -- what the run records ----------------------------------------------------------------------
    def _ema_student(self, ema) -> nn.Module:
        net = copy.deepcopy(unwrap(self.modules["student"]))
        ema.copy_to(trainable(net))
        return net

    @property
    def _distill_start(self) -> int:
        return sum(p.steps for p in self.phases[:2])

    def _record(self, step: int, net: nn.Module, logs: dict) -> dict:
        m = mode_metrics(self.mixture, _sample(net, 2048, self.dim, self.config.seed + 20_000))
        dropped = sum(m["mode_mass"][k] for k in self.config.warmup.drop_modes)
        return {"step": step, "tv": m["tv"], "precision": m["precision"], "dropped_mass": dropped, **logs}

    def start(self, step: int, output_dir: Path, is_main: bool) -> None:
        """History rows live in ``history.jsonl`` too: a resumed run keeps those before its step."""
        self.history_path, self.is_main = output_dir / "history.jsonl", is_main
        if self.makes_warm_start:
            return
        if step > 0 and self.history_path.is_file():
            done = step - self._distill_start
            self.history = [row for _, row in read_metrics(self.history_path, done)]
            if is_main:
                truncate_metrics(self.history_path, done)
        else:
            self.history = [self._record(0, unwrap(self.modules["student"]), {})]
            if is_main:
                atomic_write_text(self.history_path, json.dumps(self.history[0]) + "\n")

    def on_log(self, record: dict, ema: dict[str, Any]) -> None:
        if record["phase"] == "distill":
            logs = {k: v for k, v in record.items() if k not in ("step", "phase", "sec_per_step")}
            self.history.append(self._record(record["step"] - self._distill_start, self._ema_student(ema["ema"]),
                                             logs))
            if self.is_main:  # on_log runs on every process
                with self.history_path.open("a") as f:
                    f.write(json.dumps(self.history[-1]) + "\n")

    def finish(self, output_dir: Path, ema: dict[str, Any]) -> None:
        cfg, student = self.config, unwrap(self.modules["student"])
        if self.makes_warm_start:  # the raw networks after the ODE and critic phases
            samples = _sample(student, cfg.eval_samples, self.dim, cfg.seed + 10_000)
            fake, disc = unwrap(self.modules["fake_score"]), unwrap(self.disc)
            self.warm_start = WarmStart(cfg.warm_settings(), copy.deepcopy(student.state_dict()),
                                        copy.deepcopy(fake.state_dict()), copy.deepcopy(disc.state_dict()), samples,
                                        mode_metrics(self.mixture, samples))
            return
        net = self._ema_student(ema["ema"]).requires_grad_(False)
        samples = _sample(net, cfg.eval_samples, self.dim, cfg.seed + 10_000)
        self.result = GMMResult(samples, mode_metrics(self.mixture, samples), self.history, net)


def gmm_config(overrides: dict[str, Any], divergence: str | None = None) -> GMMConfig:
    """:class:`GMMConfig` from dotted keys (``{"warmup.drop_modes": [1], "objective.gan_weight": 1e-3}``)
    through the common config builder (unknown and renamed keys stop with a message)."""
    data: dict = {}
    for key, value in overrides.items():
        if key.startswith("objective_"):
            raise ConfigError(f"renamed setting: {key} → objective.{key.removeprefix('objective_')}")
        if key == "discriminator" and isinstance(value, str):
            raise ConfigError("renamed setting: discriminator='oracle' → oracle_discriminator=True")
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = list(value) if isinstance(value, tuple) else value
    if divergence is not None:
        data.setdefault("objective", {})["divergence"] = divergence
    return build(GMMConfig, data)


def _run(mixture: GaussianMixture, cfg: GMMConfig, init: WarmStart | None,
         resume: str | bool | None = None) -> GMMDistill:
    desc = f"gmm {cfg.objective.divergence}"
    if cfg.output_dir:
        return train(cfg, lambda accelerator: GMMDistill(mixture, cfg, init), resume, cfg.optim.grad_clip, desc)
    if resume:
        raise ValueError(f"resume={resume!r} needs output_dir (the folder of the checkpoints to resume)")
    with tempfile.TemporaryDirectory() as tmp:
        return train(dataclasses.replace(cfg, output_dir=tmp), lambda accelerator: GMMDistill(mixture, cfg, init),
                     desc=desc)


def warm_start(mixture: GaussianMixture, seed: int = 0, cache_dir: str | Path | None = None,
               **overrides) -> WarmStart:
    """Regress the student on teacher ODE pairs (minus ``warmup.drop_modes``), then fit the critics to it.

    The critic warm-up trains the fake score and the discriminator together (the critic loss does not
    depend on the divergence). ``overrides``: dotted config keys as in :func:`distill_gmm`. With
    ``cache_dir`` the warm start is kept there (keyed by the mixture and every setting that shapes it)
    and reused by later calls.
    """
    cfg = dataclasses.replace(gmm_config(overrides), seed=seed, steps=0)
    settings = {"mixture": {k: v.tolist() for k, v in mixture.state_dict().items()}, **cfg.warm_settings()}
    made: list[WarmStart] = []

    def make() -> dict[str, Tensor]:
        made.append(_run(mixture, cfg, None).warm_start)
        return made[0].tensors()

    data = cached_tensors(cache_dir, "gmm_warm_start", settings, make)
    return made[0] if made else WarmStart.from_tensors(cfg.warm_settings(), data, mixture)


def distill_gmm(mixture: GaussianMixture, divergence: str = "js", steps: int | None = None, seed: int = 0,
                progress: bool = False, init: WarmStart | None = None, resume: str | bool | None = None,
                **overrides) -> GMMResult:
    """Distil a one-step MLP student onto ``mixture`` with f-divergence ``divergence``.

    ``overrides`` are dotted :class:`GMMConfig` keys (Python keyword arguments, ``**{...}`` for dotted ones):
    ``critic_steps=5``, ``**{"warmup.drop_modes": [6, 7], "objective.gan_weight": 1e-3}``.
    ``init``: a :func:`warm_start` made with the same seed and warm-up settings (else one is made here).
    ``resume``: ``"latest"`` or a checkpoint folder, with ``output_dir=`` set (checkpoints every
    ``checkpoint_every`` steps; the resumed run repeats the uninterrupted one bit for bit).
    Returns the (EMA) student's samples (``eval_samples``, D), its mode metrics (with ``init`` metrics,
    the mass on the dropped modes and a ratio check when a discriminator is used), a history (every
    ``eval_every`` steps) and the EMA student.
    """
    cfg = gmm_config(overrides, divergence)
    cfg = dataclasses.replace(cfg, seed=seed, progress=progress, steps=cfg.steps if steps is None else steps)
    if init is None:
        init = warm_start(mixture, seed, **overrides)
    mismatch = {k: (v, cfg.warm_settings()[k]) for k, v in init.settings.items() if cfg.warm_settings()[k] != v}
    if mismatch:
        raise ValueError(f"the warm start was made with other settings (warm start, this run): {mismatch}")
    method = _run(mixture, dataclasses.replace(cfg, seed=seed + 1), init, resume)
    res = method.result
    res.metrics["init"] = init.metrics
    drop = cfg.warmup.drop_modes
    if drop:
        res.metrics["dropped_mass"] = sum(res.metrics["mode_mass"][k] for k in drop)
        res.metrics["dropped_weight"] = float(mixture.weights[list(drop)].sum())
    if method.objective.discriminator is not None:  # against the student it was trained on (not the EMA)
        res.metrics["ratio_check"] = ratio_check(mixture, unwrap(method.modules["student"]),
                                                 method.objective.discriminator, method.dim, num_ref=cfg.check_samples,
                                                 r_min=cfg.objective.r_min, r_max=cfg.objective.r_max, seed=seed + 3)
    return res
