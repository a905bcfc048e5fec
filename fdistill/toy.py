"""f-distill on Gaussian mixtures, where the teacher score and the student's q_t are exact.

``distill_gmm`` runs the same :class:`~fdistill.objective.FDistillObjective` as the image trainer
with MLPs: a one-step generator z → x, an online fake score, and a discriminator on (x_t, t).
The student starts from teacher probability-flow-ODE pairs (as DMD and CausVid do), optionally
with some modes dropped from those pairs, so what distribution matching then does to the mode
masses is measurable: ``recover`` tests whether a divergence brings dropped modes back.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .denoisers import Denoiser
from .gmm import GaussianMixture, GaussianMixtureDenoiser
from .objective import FDistillObjective, ObjectiveConfig
from .schedules import EDMSchedule

__all__ = ["GaussianMixture", "GMMConfig", "GMMResult", "distill_gmm", "mode_metrics"]


def mlp(d_in: int, d_out: int, width: int = 128, depth: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else width, width), nn.SiLU()]
    return nn.Sequential(*layers, nn.Linear(width, d_out))


class TimeMLP(nn.Module):
    """F(x_in, c_noise) → (B, d_out) for a preconditioned denoiser or a discriminator."""

    def __init__(self, dim: int, d_out: int, width: int = 128, depth: int = 3):
        super().__init__()
        self.net = mlp(dim + 2, d_out, width, depth)

    def forward(self, sample: Tensor, timestep: Tensor) -> Tensor:
        c = timestep.reshape(-1, 1).to(sample).expand(sample.shape[0], 1)
        return self.net(torch.cat([sample, c.sin(), c.cos()], 1))


class RawDiscriminator(nn.Module):
    """D(x_t, t) on the schedule's preconditioned input (the toy teacher has no features to tap)."""

    def __init__(self, schedule: EDMSchedule, dim: int, width: int = 128):
        super().__init__()
        self.schedule, self.net = schedule, TimeMLP(dim, 1, width)

    def forward(self, x_t: Tensor, t: Tensor, condition: Tensor | None = None) -> Tensor:
        return self.net(self.schedule.model_input(x_t, t), self.schedule.model_time(t)).squeeze(1)


@dataclass
class GMMConfig:
    """Toy run settings; ``objective`` holds the divergence and the f-distill knobs."""

    objective: ObjectiveConfig = field(default_factory=lambda: ObjectiveConfig(gan_weight=0.0))
    steps: int = 1500
    batch_size: int = 512
    critic_steps: int = 3
    lr_generator: float = 1e-4
    lr_critic: float = 1e-3
    width: int = 128
    ode_pairs: int = 8192
    ode_steps: int = 48
    warmup_steps: int = 1500
    fake_warmup_steps: int = 500
    drop_modes: tuple[int, ...] = ()
    eval_samples: int = 20000


@dataclass
class GMMResult:
    samples: Tensor
    metrics: dict
    history: list[dict] = field(default_factory=list)
    generator: nn.Module | None = None


def mode_metrics(mixture: GaussianMixture, x: Tensor, num_std: float = 3.0) -> dict:
    """Mode masses, coverage, TV to the true masses, and precision of samples x (N, D)."""
    k = mixture.assign(x, num_std)
    n = x.shape[0]
    mass = torch.stack([(k == j).float().sum() / n for j in range(mixture.num_modes)])
    w = mixture.weights.cpu()
    off = 1 - mass.sum()
    return {
        "mode_mass": [round(m, 5) for m in mass.tolist()],
        "modes_covered": int((mass >= w / 2).sum()),
        "tv": float(0.5 * ((mass - w).abs().sum() + off)),
        "precision": float((k >= 0).float().mean()),
    }


@torch.no_grad()
def ratio_check(mixture: GaussianMixture, schedule: EDMSchedule, generator: nn.Module,
                discriminator: nn.Module, dim: int, n: int = 4096, seed: int = 1) -> dict:
    """Discriminator log r vs the exact log p_t/q_t (q_t of a deterministic generator is a kernel sum)."""
    g = torch.Generator().manual_seed(seed)
    x0 = generator(torch.randn(n, dim, generator=g))
    ref = generator(torch.randn(n, dim, generator=g))
    out = {}
    for frac in (0.2, 0.5):
        sigma = math.exp(math.log(schedule.sigma_min) + frac * (math.log(schedule.sigma_max) - math.log(schedule.sigma_min)))
        t = torch.full((n,), sigma)
        x_t = x0 + sigma * torch.randn(x0.shape, generator=g)
        log_p = mixture.log_prob(x_t, 1.0, sigma)
        d2 = torch.cdist(x_t, ref).pow(2)
        log_q = (-0.5 * d2 / sigma**2).logsumexp(1) - math.log(n) - dim * math.log(sigma * math.sqrt(2 * math.pi))
        true, est = log_p - log_q, discriminator(x_t, t)
        c = torch.corrcoef(torch.stack([true, est]))[0, 1]
        out[f"sigma_{sigma:.3g}"] = {"corr": float(c), "mae": float((true - est).abs().mean())}
    return out


def _ode_pairs(mixture, schedule, cfg: GMMConfig, dim: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    target = mixture
    if cfg.drop_modes:
        w = mixture.weights.clone()
        w[list(cfg.drop_modes)] = 0
        target = GaussianMixture(mixture.means, mixture.stds, w)
    z = torch.randn(cfg.ode_pairs, dim, generator=g)
    return z, schedule.sample(GaussianMixtureDenoiser(target, schedule), z, cfg.ode_steps)


def distill_gmm(mixture: GaussianMixture, divergence: str = "js", steps: int | None = None, seed: int = 0,
                progress: bool = False, **overrides) -> GMMResult:
    """Distil a one-step MLP generator onto ``mixture`` with f-divergence ``divergence``.

    ``overrides`` set :class:`GMMConfig` fields (``critic_steps=5``, ``drop_modes=(6, 7)``…) or, with an
    ``objective_`` prefix, :class:`ObjectiveConfig` fields (``objective_gan_weight=1e-3``).
    Returns the student's samples (``eval_samples``, D), its mode metrics and a ratio check.
    """
    obj_kw = {k.removeprefix("objective_"): v for k, v in overrides.items() if k.startswith("objective_")}
    cfg_kw = {k: v for k, v in overrides.items() if not k.startswith("objective_")}
    names = {f.name for f in dataclasses.fields(GMMConfig)}
    unknown = sorted(set(cfg_kw) - names)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; valid: {sorted(names)} and objective_<field>")
    cfg = GMMConfig(**cfg_kw)
    cfg.objective = dataclasses.replace(cfg.objective, divergence=divergence, **obj_kw)
    if steps is not None:
        cfg.steps = steps

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    dim = mixture.means.shape[1]
    data_std = float(torch.sqrt((mixture.weights[:, None] * (mixture.means**2 + mixture.stds**2)).sum(0).mean()))
    schedule = EDMSchedule(sigma_data=data_std, sigma_max=20 * data_std, P_mean=math.log(data_std), P_std=1.5)

    generator = mlp(dim, dim, cfg.width)
    fake = Denoiser(TimeMLP(dim, dim, cfg.width), schedule, condition_key=None)
    disc = RawDiscriminator(schedule, dim, cfg.width) if cfg.objective.needs_discriminator else None
    objective = FDistillObjective(schedule, GaussianMixtureDenoiser(mixture, schedule), fake, disc, cfg.objective)

    # 1) regress the generator on teacher ODE pairs (the DMD / CausVid initialisation)
    z, x = _ode_pairs(mixture, schedule, cfg, dim, g)
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3)
    for _ in range(cfg.warmup_steps):
        i = torch.randint(0, z.shape[0], (cfg.batch_size,), generator=g)
        loss = (generator(z[i]) - x[i]).pow(2).mean()
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()

    critic_params = list(fake.parameters()) + (list(disc.parameters()) if disc is not None else [])
    opt_c = torch.optim.Adam(critic_params, lr=cfg.lr_critic, betas=(0.0, 0.99))
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr_generator, betas=(0.0, 0.99))

    def critic_step():
        with torch.no_grad():
            x0 = generator(torch.randn(cfg.batch_size, dim, generator=g))
        real, _ = mixture.sample(cfg.batch_size, g)
        loss, logs = objective.critic_loss(x0, real, generator=g)
        opt_c.zero_grad()
        loss.backward()
        opt_c.step()
        return logs

    # 2) fit the fake score (and discriminator) to the initial student before moving it
    for _ in range(cfg.fake_warmup_steps):
        critic_step()
    history = []
    it = range(cfg.steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"gmm {divergence}", leave=False)
    # 3) f-distill: critic steps, then one generator step
    for step in it:
        for _ in range(cfg.critic_steps):
            c_logs = critic_step()
        x0 = generator(torch.randn(cfg.batch_size, dim, generator=g))
        loss, g_logs = objective.generator_loss(x0, generator=g)
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            history.append({"step": step, **g_logs, **c_logs})

    generator.eval()
    with torch.no_grad():
        samples = generator(torch.randn(cfg.eval_samples, dim, generator=torch.Generator().manual_seed(seed + 10_000)))
    metrics = mode_metrics(mixture, samples)
    if disc is not None:
        metrics["ratio_check"] = ratio_check(mixture, schedule, generator, disc, dim)
    return GMMResult(samples, metrics, history, generator)
