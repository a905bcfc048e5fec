"""f-distill on Gaussian mixtures, where the teacher score and the student's q_t are exact.

``distill_gmm`` runs the same :class:`~fdistill.objective.FDistillObjective` on the same loop
(:mod:`fdistill.training.trainer`) as the image trainer, with MLPs: a one-step generator z → x, an online fake score, and a discriminator on (x_t, t).
The student starts from teacher probability-flow-ODE pairs (as DMD and CausVid do), optionally
with some modes dropped from those pairs, so what distribution matching then does to the mode
masses is measurable: ``drop_modes`` tests whether a divergence brings dropped modes back.

The student's noised marginal q_t = q_0 * N(0, σ²) is estimated without bias by a Gaussian kernel
sum over fresh student samples, so the discriminator's ratio can be checked against
log p_t − log q_t (:func:`ratio_check`), or replaced by it (``discriminator="oracle"``).
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
from fdistill.gmm import GaussianMixture, GaussianMixtureDenoiser
from fdistill.losses import discriminator_loss
from fdistill.objective import FDistillObjective, ObjectiveConfig
from fdistill.schedules import EDMSchedule

from .checkpoint import atomic_write_text, read_metrics, truncate_metrics
from .trainer import Draw, LoopConfig, Method, Update, train

__all__ = ["GaussianMixture", "GMMConfig", "GMMResult", "WarmStart", "distill_gmm", "log_kde", "mode_metrics",
           "random_mixture", "ratio_check", "warm_start"]


def random_mixture(seed: int = 0, num_modes: int = 6, std: float = 0.25, narrow: float = 5.0, radius: float = 4.0,
                   min_distance: float = 2.5, max_weight_ratio: float = 4.0) -> GaussianMixture:
    """An irregular 2-D mixture whose one mode is ``narrow`` times narrower than the others (seeded).

    Means uniform in the disc of ``radius``, at least ``min_distance`` apart (redrawn until they
    are); stds ``std`` · log-uniform [0.8, 1.25], except one random mode with ``std / narrow``;
    weights uniform in [1, ``max_weight_ratio``], normalised. The narrow mode is ``stds[:, 0].argmin()``.
    """
    if num_modes < 2 or narrow < 1 or std <= 0 or max_weight_ratio < 1:
        raise ValueError(f"need num_modes >= 2, narrow >= 1, std > 0, max_weight_ratio >= 1; got {num_modes}, "
                         f"{narrow}, {std}, {max_weight_ratio}")
    g = torch.Generator().manual_seed(seed)
    means = torch.zeros(0, 2)
    for _ in range(10_000):
        if means.shape[0] == num_modes:
            break
        u = torch.rand(2, generator=g)
        x = radius * u[0].sqrt() * torch.stack([(2 * math.pi * u[1]).cos(), (2 * math.pi * u[1]).sin()])
        if means.shape[0] == 0 or torch.cdist(x[None], means).min() >= min_distance:
            means = torch.cat([means, x[None]])
    else:
        raise ValueError(f"could not place {num_modes} means {min_distance} apart in a disc of radius {radius}")
    stds = std * torch.empty(num_modes).uniform_(math.log(0.8), math.log(1.25), generator=g).exp()
    stds[int(torch.randint(num_modes, (), generator=g))] = std / narrow
    weights = torch.empty(num_modes).uniform_(1.0, max_weight_ratio, generator=g)
    return GaussianMixture(means, stds, weights)


def mlp(d_in: int, d_out: int, width: int = 128, depth: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else width, width), nn.SiLU()]
    return nn.Sequential(*layers, nn.Linear(width, d_out))


class FourierMLP(nn.Module):
    """F(x, c_noise) → (B, d_out): an MLP on x, random Fourier features sin/cos(x B) and c_noise.

    The features (Tancik et al. 2020, B ~ N(0, scale²), fixed) let a small MLP on 2-D inputs follow
    the sharp structure of p_t/q_t at small σ, where the plain MLP on (x, c_noise) stayed close to
    chance (ratio_check).
    """

    B: Tensor

    def __init__(self, dim: int, d_out: int, width: int = 128, depth: int = 3, num_freqs: int = 64,
                 scale: float = 1.0):
        super().__init__()
        self.register_buffer("B", torch.randn(dim, num_freqs) * scale)
        self.net = mlp(dim + 2 * num_freqs + 3, d_out, width, depth)

    def forward(self, sample: Tensor, timestep: Tensor) -> Tensor:
        c = timestep.reshape(-1, 1).to(sample).expand(sample.shape[0], 1)
        f = sample @ self.B
        return self.net(torch.cat([sample, f.sin(), f.cos(), c, c.sin(), c.cos()], 1))


class Discriminator(nn.Module):
    """D(x_t, t) → logits (B,) on the raw x_t (the toy teacher has no features to tap)."""

    def __init__(self, schedule: EDMSchedule, dim: int, width: int = 128):
        super().__init__()
        self.schedule, self.net = schedule, FourierMLP(dim, 1, width)

    def forward(self, x_t: Tensor, t: Tensor, condition: Tensor | None = None) -> Tensor:
        return self.net(x_t, self.schedule.model_time(t)).squeeze(1)


def log_kde(x_t: Tensor, ref: Tensor, sigma: Tensor | float, chunk: int = 1024) -> Tensor:
    """log q_t(x_t) for q_t = (1/N Σ_j δ_{y_j}) * N(0, σ²I): x_t (B, D), ref y (N, D), σ scalar or (B,).

    For y_j drawn from the student q_0 this is an unbiased estimate of q_t (its log is biased low
    when σ is so small that few y_j lie within σ of x_t).
    """
    sigma = torch.as_tensor(sigma, dtype=x_t.dtype).expand(x_t.shape[0])
    out = []
    for x, s in zip(x_t.split(chunk), sigma.split(chunk), strict=True):
        d2 = torch.cdist(x, ref).pow(2)
        out.append((-0.5 * d2 / s[:, None] ** 2).logsumexp(1) - x_t.shape[1] * (s * math.sqrt(2 * math.pi)).log())
    return torch.cat(out) - math.log(ref.shape[0])


class OracleDiscriminator(nn.Module):
    """D(x_t, t) = log p_t(x_t) − log q_t(x_t), the optimal discriminator's logit (EDM: t = σ).

    p_t is the teacher's exact density, q_t a kernel sum over ``num_ref`` student samples. A
    diagnostic with the learned discriminator's interface: it separates what a divergence does
    with the true ratio from what an imperfect estimate makes of it. ``refresh`` marks the samples
    stale (call it whenever the generator has moved; they are redrawn on next use); while ``skip``
    is set it returns zeros, since critic steps have nothing to train in it.
    """

    ref: Tensor

    def __init__(self, mixture: GaussianMixture, generator: nn.Module, dim: int, num_ref: int = 4096,
                 seed: int = 0):
        super().__init__()
        # a list, so that the generator's parameters do not become the critic optimiser's
        self.mixture, self.generator, self.dim, self.num_ref = mixture, [generator], dim, num_ref
        self.rng = torch.Generator().manual_seed(seed)
        self.skip = False
        self.register_buffer("ref", torch.zeros(0, dim), persistent=False)

    def refresh(self) -> None:
        self.ref = self.ref[:0]

    def get_extra_state(self) -> Tensor:  # checkpointed: a resumed run draws the same reference samples
        return self.rng.get_state()

    def set_extra_state(self, state: Tensor) -> None:
        self.rng.set_state(state)

    @torch.no_grad()
    def forward(self, x_t: Tensor, t: Tensor, condition: Tensor | None = None) -> Tensor:
        if self.skip:
            return x_t.new_zeros(x_t.shape[0])
        if self.ref.shape[0] == 0:
            self.ref = self.generator[0](torch.randn(self.num_ref, self.dim, generator=self.rng))
        t = torch.as_tensor(t, dtype=x_t.dtype).expand(x_t.shape[0])
        return self.mixture.log_prob(x_t, 1.0, t) - log_kde(x_t, self.ref, t)


@dataclass
class GMMConfig(LoopConfig):
    """Toy run settings; ``objective`` holds the divergence and the f-distill knobs.

    Training σ is log-normal, ln σ ~ N(p_mean, p_std²): the default median σ ≈ 0.5 puts most draws
    where modes 0.2–0.3 wide and 3–8 apart are told apart (``p_mean=None`` centres it on the data
    std, ≈ 2.8 for the ring, where p_t ≈ q_t and the ratio carries no signal). ``discriminator``
    is ``"learned"`` (the algorithm) or ``"oracle"`` (a diagnostic: the exact log p_t/q_t, q_t from
    ``oracle_ref`` student samples). ``check_samples``: student samples behind :func:`ratio_check`.
    Metrics and samples come from an EMA of the generator (``ema_decay``): at ``lr_generator`` 1e-3
    the raw generator oscillates (precision 0.84 → 0.6 → 0.84 within 50 steps) while the fake score
    catches up, and a lower rate moves it too little to recover anything in a few hundred steps.
    """

    objective: ObjectiveConfig = field(default_factory=lambda: ObjectiveConfig(gan_weight=0.0))
    steps: int = 1500
    batch_size: int = 256
    ema_decay: float = 0.98
    checkpoint_every: int = 1_000_000  # the toy keeps its final checkpoint only
    output_dir: str = ""  # "": a temporary folder
    progress: bool = False
    critic_steps: int = 2
    lr_generator: float = 1e-3
    lr_critic: float = 1e-3
    width: int = 128
    generator_depth: int = 3
    disc_width: int = 128
    discriminator: str = "learned"
    oracle_ref: int = 4096
    p_mean: float | None = -0.7
    p_std: float = 1.5
    ode_pairs: int = 8192
    ode_steps: int = 48
    warmup_steps: int = 1500
    fake_warmup_steps: int = 500
    drop_modes: list[int] = field(default_factory=list)
    eval_samples: int = 20000
    eval_every: int = 100
    check_samples: int = 8192

    def __post_init__(self):
        self.log_every = self.eval_every
        super().__post_init__()
        if self.generator_depth < 1:
            raise ValueError(f"generator_depth must be >= 1 (hidden layers of the generator MLP), got "
                             f"{self.generator_depth}")
        if self.discriminator not in ("learned", "oracle"):
            raise ValueError(f"discriminator must be 'learned' or 'oracle', got {self.discriminator!r}")


# fields that shape the warm start: a cached WarmStart is only valid for runs that agree on them
_WARM_FIELDS = ("width", "generator_depth", "disc_width", "p_mean", "p_std", "batch_size", "lr_critic", "ode_pairs",
                "ode_steps", "warmup_steps", "fake_warmup_steps", "drop_modes")


@dataclass
class WarmStart:
    """Networks after ODE-pair regression (generator) and critic warm-up (fake score, discriminator).

    Divergence-independent, so one warm start serves every divergence of a seed.
    """

    seed: int
    config: dict
    generator: dict
    fake_score: dict
    discriminator: dict
    metrics: dict
    samples: Tensor


@dataclass
class GMMResult:
    samples: Tensor
    metrics: dict
    history: list[dict] = field(default_factory=list)
    generator: nn.Module | None = None


def mode_metrics(mixture: GaussianMixture, x: Tensor, num_std: float = 3.0) -> dict:
    """Mode masses, coverage, TV to the true masses, and precision of samples x (N, D).

    ``mode_mass`` counts samples within ``num_std`` σ of a mode, so a mode drawn too wide loses
    mass there as surely as one that is dropped; ``mode_mass_nearest`` (every sample to its
    nearest mean, ``tv_nearest``) and ``mode_width`` (median σ-scaled distance of a mode's nearest
    samples over that of the mode itself: 1 = right width) tell the two apart.
    """
    k = mixture.assign(x, num_std)
    n, dim = x.shape
    mass = torch.stack([(k == j).float().sum() / n for j in range(mixture.num_modes)])
    w = mixture.weights.cpu()
    off = 1 - mass.sum()
    dist = ((x[:, None, :] - mixture.means) / mixture.stds).pow(2).sum(-1).sqrt()
    nearest = torch.cdist(x, mixture.means).argmin(1)
    mass_nearest = torch.stack([(nearest == j).float().sum() / n for j in range(mixture.num_modes)])
    chi_median = math.sqrt(dim * (1 - 2 / (9 * dim)) ** 3)  # Wilson-Hilferty: median of ‖N(0, I_D)‖
    width = [float(dist[nearest == j, j].median() / chi_median) if (nearest == j).sum() > 1 else float("nan")
             for j in range(mixture.num_modes)]
    return {
        "mode_mass": [round(m, 5) for m in mass.tolist()],
        "modes_covered": int((mass >= w / 2).sum()),
        "tv": float(0.5 * ((mass - w).abs().sum() + off)),
        "precision": float((k >= 0).float().mean()),
        "mode_mass_nearest": [round(m, 5) for m in mass_nearest.tolist()],
        "tv_nearest": float(0.5 * (mass_nearest - w).abs().sum()),
        "mode_width": [round(v, 3) for v in width],
    }


def _schedule(mixture: GaussianMixture, cfg: GMMConfig) -> EDMSchedule:
    data_std = float(torch.sqrt((mixture.weights[:, None] * (mixture.means**2 + mixture.stds**2)).sum(0).mean()))
    p_mean = math.log(data_std) if cfg.p_mean is None else cfg.p_mean
    return EDMSchedule(sigma_data=data_std, sigma_max=20 * data_std, P_mean=p_mean, P_std=cfg.p_std)


def _networks(schedule: EDMSchedule, cfg: GMMConfig, dim: int) -> tuple[nn.Module, Denoiser, Discriminator]:
    generator = mlp(dim, dim, cfg.width, cfg.generator_depth)
    fake = Denoiser(FourierMLP(dim, dim, cfg.width), schedule, condition_key=None)
    return generator, fake, Discriminator(schedule, dim, cfg.disc_width)


def _config(overrides: dict, divergence: str = "reverse_kl") -> GMMConfig:
    obj_kw = {k.removeprefix("objective_"): v for k, v in overrides.items() if k.startswith("objective_")}
    cfg_kw = {k: v for k, v in overrides.items() if not k.startswith("objective_")}
    names = {f.name for f in dataclasses.fields(GMMConfig)}
    unknown = sorted(set(cfg_kw) - names)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; valid: {sorted(names)} and objective_<field>")
    if "drop_modes" in cfg_kw:
        cfg_kw["drop_modes"] = list(cfg_kw["drop_modes"])
    cfg = GMMConfig(**cfg_kw)
    cfg.objective = dataclasses.replace(cfg.objective, divergence=divergence, **obj_kw)
    return cfg


def _ode_pairs(mixture, schedule, cfg: GMMConfig, dim: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    target = mixture
    if cfg.drop_modes:
        w = mixture.weights.clone()
        w[list(cfg.drop_modes)] = 0
        target = GaussianMixture(mixture.means, mixture.stds, w)
    z = torch.randn(cfg.ode_pairs, dim, generator=g)
    return z, schedule.sample(GaussianMixtureDenoiser(target, schedule), z, cfg.ode_steps)


@torch.no_grad()
def _sample(generator: nn.Module, n: int, dim: int, seed: int) -> Tensor:
    return generator(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)))


class GMMDistill(Method):
    """f-distill of a one-step MLP generator onto a Gaussian mixture, on the shared loop.

    Phases: ``warmup_steps`` regressions on teacher ODE pairs (minus ``drop_modes``), then
    ``fake_warmup_steps`` critic updates (fake score + discriminator, divergence-independent), then
    ``steps`` f-distill steps (``critic_steps`` critic updates, one generator update). ``init``
    (a :class:`WarmStart`) replaces the first two phases.
    """

    def __init__(self, mixture: GaussianMixture, cfg: GMMConfig, init: WarmStart | None):
        self.mixture, self.cfg, self.dim = mixture, cfg, mixture.means.shape[1]
        self.schedule = _schedule(mixture, cfg)
        generator, fake, disc = _networks(self.schedule, cfg, self.dim)
        self.warm = 0 if init is not None else cfg.warmup_steps
        self.critic_warm = 0 if init is not None else cfg.fake_warmup_steps
        if init is not None:
            generator.load_state_dict(init.generator)
            fake.load_state_dict(init.fake_score)
            disc.load_state_dict(init.discriminator)
        objective = cfg.objective if init is not None else dataclasses.replace(cfg.objective,
                                                                               divergence="jensen_shannon")
        self.oracle = None
        if cfg.discriminator == "oracle" and init is not None:
            disc = self.oracle = OracleDiscriminator(mixture, generator, self.dim, cfg.oracle_ref, cfg.seed + 2)
        self.modules = {"generator": generator, "fake_score": fake}
        self.has_disc = objective.needs_discriminator
        if self.has_disc and self.oracle is None:
            self.modules["discriminator"] = disc
        self.disc, self.objective_config = disc, objective
        critic = [*fake.parameters(), *(disc.parameters() if "discriminator" in self.modules else [])]
        self.optimizers = {
            "warmup": torch.optim.Adam(generator.parameters(), lr=1e-3),
            "critic": torch.optim.Adam(critic, lr=cfg.lr_critic, betas=(0.0, 0.99)),
            "generator": torch.optim.Adam(generator.parameters(), lr=cfg.lr_generator, betas=(0.0, 0.99)),
        }
        self.ema, self.states = {"ema": "generator"}, {}
        self.total_steps = self.warm + self.critic_warm + cfg.steps
        self.pairs = _ode_pairs(mixture, self.schedule, cfg, self.dim,
                                torch.Generator().manual_seed(cfg.seed)) if self.warm else None
        self.makes_warm_start = init is None
        self.history: list[dict] = []
        self.result: GMMResult | None = None

    def prepared(self) -> None:
        m = self.modules
        disc = m.get("discriminator", self.oracle) if self.has_disc else None
        self.objective = FDistillObjective(self.schedule, GaussianMixtureDenoiser(self.mixture, self.schedule),
                                           m["fake_score"], disc, self.objective_config)
        # what a bit-exact resume needs besides modules, optimisers and EMA
        self.states = {"ratio_normalizer": self.objective.ratio_normalizer,
                       **({"oracle": self.oracle} if self.oracle is not None else {})}

    def phase(self, step: int) -> str:
        return "warmup" if step < self.warm else "critic_warmup" if step < self.warm + self.critic_warm else "distill"

    def ode_loss(self, draw: Draw) -> tuple[Tensor, dict[str, Tensor]]:
        z, x = self.pairs
        i = draw(lambda n, g: torch.randint(0, z.shape[0], (n,), generator=g))
        loss = (self.modules["generator"](z[i]) - x[i]).pow(2).mean()
        return loss, {"ode_mse": loss.detach()}

    def critic_loss(self, draw: Draw) -> tuple[Tensor, dict[str, Tensor]]:
        if self.oracle is not None:
            self.oracle.skip = True  # nothing to train in the exact ratio
        with torch.no_grad():
            x0 = self.modules["generator"](draw.randn(self.dim))
        real = draw(lambda n, g: self.mixture.sample(n, g)[0])
        t, eps = draw(lambda n, g: self.objective.noise(n, (self.dim,), g))
        t_real, eps_real = draw(lambda n, g: self.objective.noise(n, (self.dim,), g))
        return self.objective.critic_loss(x0, None, t, eps, real, None, t_real, eps_real)

    def generator_loss(self, draw: Draw) -> tuple[Tensor, dict[str, Tensor]]:
        if self.oracle is not None:
            self.oracle.skip = False
            self.oracle.refresh()  # the generator has moved since the last draw of reference samples
        x0 = self.modules["generator"](draw.randn(self.dim))
        return self.objective.generator_loss(x0, None, *draw(lambda n, g: self.objective.noise(n, (self.dim,), g)))

    def updates(self, step: int) -> list[Update]:
        b = self.cfg.batch_size
        if step < self.warm:
            return [Update("ode_warmup", "warmup", self.ode_loss, b)]
        critic = [Update("critic", "critic", self.critic_loss, b)] * self.cfg.critic_steps
        if step < self.warm + self.critic_warm:
            return critic[:1]
        return [*critic, Update("generator", "generator", self.generator_loss, b)]

    def _ema_generator(self, ema) -> nn.Module:
        net = copy.deepcopy(unwrap(self.modules["generator"]))
        ema.copy_to(net.parameters())
        return net

    def _record(self, step: int, net: nn.Module, logs: dict) -> dict:
        m = mode_metrics(self.mixture, _sample(net, 2048, self.dim, self.cfg.seed + 20_000))
        dropped = sum(m["mode_mass"][k] for k in self.cfg.drop_modes)
        return {"step": step, "tv": m["tv"], "precision": m["precision"], "dropped_mass": dropped, **logs}

    def start(self, step: int, output_dir: Path, is_main: bool) -> None:
        """History rows live in ``history.jsonl`` too: a resumed run keeps those before its step."""
        self.history_path, self.is_main = output_dir / "history.jsonl", is_main
        if self.makes_warm_start:
            return
        if step > 0 and self.history_path.is_file():
            done = step - self.warm - self.critic_warm
            self.history = [row for _, row in read_metrics(self.history_path, done)]
            if is_main:
                truncate_metrics(self.history_path, done)
        else:
            self.history = [self._record(0, unwrap(self.modules["generator"]), {})]
            if is_main:
                atomic_write_text(self.history_path, json.dumps(self.history[0]) + "\n")

    def on_log(self, record: dict, ema: dict[str, Any]) -> None:
        if record["phase"] == "distill":
            logs = {k: v for k, v in record.items() if k not in ("step", "phase", "sec_per_step")}
            step = record["step"] - self.warm - self.critic_warm
            self.history.append(self._record(step, self._ema_generator(ema["ema"]), logs))
            if self.is_main:  # on_log runs on every process
                with self.history_path.open("a") as f:
                    f.write(json.dumps(self.history[-1]) + "\n")

    def finish(self, output_dir: Path, ema: dict[str, Any]) -> None:
        cfg, generator = self.cfg, unwrap(self.modules["generator"])
        if self.makes_warm_start:  # the raw networks after the ODE and critic phases
            samples = _sample(generator, cfg.eval_samples, self.dim, cfg.seed + 10_000)
            self.warm_start = WarmStart(cfg.seed, {k: getattr(cfg, k) for k in _WARM_FIELDS},
                                        copy.deepcopy(generator.state_dict()),
                                        copy.deepcopy(unwrap(self.modules["fake_score"]).state_dict()),
                                        copy.deepcopy(self.disc.state_dict()), mode_metrics(self.mixture, samples),
                                        samples)
            return
        net = self._ema_generator(ema["ema"]).requires_grad_(False)
        samples = _sample(net, cfg.eval_samples, self.dim, cfg.seed + 10_000)
        self.result = GMMResult(samples, mode_metrics(self.mixture, samples), self.history, net)


def unwrap(module: nn.Module) -> nn.Module:
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(module)


def _run(mixture: GaussianMixture, cfg: GMMConfig, init: WarmStart | None,
         resume: str | bool | None = None) -> GMMDistill:
    holder: list[GMMDistill] = []

    def build(accelerator) -> GMMDistill:
        holder.append(GMMDistill(mixture, cfg, init))
        return holder[0]

    if cfg.output_dir:
        train(cfg, build, resume, desc=f"gmm {cfg.objective.divergence}")
    else:
        if resume:
            raise ValueError(f"resume={resume!r} needs output_dir (the folder of the checkpoints to resume)")
        with tempfile.TemporaryDirectory() as tmp:
            train(dataclasses.replace(cfg, output_dir=tmp), build, desc=f"gmm {cfg.objective.divergence}")
    return holder[0]


def warm_start(mixture: GaussianMixture, seed: int = 0, **overrides) -> WarmStart:
    """Regress the generator on teacher ODE pairs (minus ``drop_modes``), then fit the critics to it.

    The critic warm-up trains the fake score and the discriminator together (the critic loss does
    not depend on the divergence). ``overrides`` as in :func:`distill_gmm`.
    """
    cfg = dataclasses.replace(_config(overrides), seed=seed, steps=0)
    return _run(mixture, cfg, None).warm_start


def distill_gmm(mixture: GaussianMixture, divergence: str = "js", steps: int | None = None, seed: int = 0,
                progress: bool = False, init: WarmStart | None = None, resume: str | bool | None = None,
                **overrides) -> GMMResult:
    """Distil a one-step MLP generator onto ``mixture`` with f-divergence ``divergence``.

    ``overrides`` set :class:`GMMConfig` fields (``critic_steps=5``, ``drop_modes=(6, 7)``…) or, with an
    ``objective_`` prefix, :class:`ObjectiveConfig` fields (``objective_gan_weight=1e-3``).
    ``init``: a :func:`warm_start` made with the same seed and warm-up settings (else one is made here).
    ``resume``: ``"latest"`` or a checkpoint folder, with ``output_dir=`` set (checkpoints every
    ``checkpoint_every`` steps; the resumed run repeats the uninterrupted one bit for bit).
    Returns the (EMA) student's samples (``eval_samples``, D), its mode metrics (with ``init`` metrics,
    the mass on ``drop_modes`` and a :func:`ratio_check` when a discriminator is used), a history
    (every ``eval_every`` steps) and the EMA generator.
    """
    cfg = _config(overrides, divergence)
    cfg = dataclasses.replace(cfg, seed=seed, progress=progress, steps=cfg.steps if steps is None else steps)
    if init is None:
        init = warm_start(mixture, seed, **overrides)
    mismatch = {k: (v, getattr(cfg, k)) for k, v in init.config.items() if getattr(cfg, k) != v}
    if init.seed != seed or mismatch:
        raise ValueError(f"warm start was made with seed {init.seed} and other settings {mismatch} (warm, run)")
    method = _run(mixture, dataclasses.replace(cfg, seed=seed + 1), init, resume)
    res = method.result
    res.metrics["init"] = init.metrics
    if cfg.drop_modes:
        res.metrics["dropped_mass"] = sum(res.metrics["mode_mass"][k] for k in cfg.drop_modes)
        res.metrics["dropped_weight"] = float(mixture.weights[list(cfg.drop_modes)].sum())
    if method.objective.discriminator is not None:  # against the student it was trained on (not the EMA)
        res.metrics["ratio_check"] = ratio_check(mixture, unwrap(method.modules["generator"]),
                                                 method.objective.discriminator, method.dim, num_ref=cfg.check_samples,
                                                 r_min=cfg.objective.r_min, r_max=cfg.objective.r_max, seed=seed + 3)
    return res


@torch.no_grad()
def ratio_check(mixture: GaussianMixture, generator: nn.Module, discriminator: nn.Module, dim: int,
                sigmas: tuple[float, ...] = (0.1, 0.3, 1.0), n: int = 1024, num_ref: int = 8192,
                r_min: float = 0.1, r_max: float = 20.0, seed: int = 1) -> dict:
    """The discriminator's log r against log p_t − log q_t, per noise level σ (EDM: t = σ).

    Both sides are clipped to [log r_min, log r_max] as the objective clips r, so the numbers
    describe what h(r) sees. At student points x_t ~ q_t (where h is applied): ``corr`` (and
    ``corr_raw`` before clipping), ``mae`` after removing each side's mean (the normaliser divides
    r by its mean, so an offset is harmless) and ``std`` of the true log r; ``corr_p`` at teacher
    points x_t ~ p_t. ``disc_loss`` is the discriminator's loss at σ, ``bayes_loss`` that of the
    true ratio: when the optimum itself is ≈ 2 log 2, a loss at chance says p_t ≈ q_t, not that the
    discriminator failed.
    """
    g = torch.Generator().manual_seed(seed)
    ref = generator(torch.randn(num_ref, dim, generator=g))
    x_q = generator(torch.randn(n, dim, generator=g))
    x_p, _ = mixture.sample(n, g)
    lo, hi = math.log(r_min), math.log(r_max)

    def corr(a: Tensor, b: Tensor) -> float:
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12))

    out = {}
    for sigma in sigmas:
        t = torch.full((n,), sigma)
        pairs = {}
        for side, x0 in (("q", x_q), ("p", x_p)):
            x_t = x0 + sigma * torch.randn(x0.shape, generator=g)
            pairs[side] = (mixture.log_prob(x_t, 1.0, sigma) - log_kde(x_t, ref, sigma), discriminator(x_t, t))
        (true_q, est_q), (true_p, est_p) = pairs["q"], pairs["p"]
        cq, eq = true_q.clamp(lo, hi), est_q.clamp(lo, hi)
        out[f"sigma_{sigma:g}"] = {
            "corr": corr(cq, eq),
            "corr_raw": corr(true_q, est_q),
            "mae": float(((cq - cq.mean()) - (eq - eq.mean())).abs().mean()),
            "std": float(cq.std()),
            "corr_p": corr(true_p.clamp(lo, hi), est_p.clamp(lo, hi)),
            "disc_loss": float(discriminator_loss(est_p, est_q)),
            "bayes_loss": float(discriminator_loss(true_p, true_q)),
        }
    return out
