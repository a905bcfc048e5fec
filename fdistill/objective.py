"""The f-distill objective: one algorithm for every f (the divergence is a parameter).

Generator step (student x0 = G(z), gradients only through x0):
    x_t = α_t x0 + σ_t ε
    x̂0_p = teacher(x_t),  x̂0_q = fake(x_t)                 (no grad)
    D = discriminator(x_t)                                    (grad to x_t for the GAN term)
    r = exp(D) clipped, r ← r / EMA_bin(r),  h ← h(r) / mean h
    L_G = DM(x0, x̂0_p, x̂0_q; h) + λ_GAN softplus(−D)

Critic step (student samples detached):
    L_fake = λ(t) ‖fake(x_t) − x0‖²,   L_D = softplus(D(x_t^fake)) + softplus(−D(x_t^real)) + R1
Reverse-KL with λ_GAN = 0 is DMD; reverse-KL with a GAN term is DMD2.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import losses
from .density_ratio import RatioNormalizer, density_ratio, normalize_weights
from .divergences import get_divergence
from .schedules import NoiseSchedule

X0Model = Callable[..., Tensor]
"""x̂0(x_t, t, condition) → (B, ...)."""


@dataclass
class ObjectiveConfig:
    """Hyper-parameters of the objective (paper defaults: JS, GAN weight 1e-3…3e-3)."""

    divergence: str = "jensen_shannon"
    guidance_scale: float = 1.0
    gan_weight: float = 1e-3
    r1_gamma: float = 0.0
    logit_clamp: float = 10.0
    r_min: float = 0.1
    r_max: float = 20.0
    ratio_bins: int = 10
    ratio_decay: float = 0.99
    normalize_ratio: bool = True
    normalize_h: bool = True

    def __post_init__(self):
        get_divergence(self.divergence)
        if not 0 < self.r_min < self.r_max:
            raise ValueError(f"need 0 < r_min < r_max, got r_min={self.r_min}, r_max={self.r_max}")
        if self.gan_weight < 0 or self.r1_gamma < 0 or self.logit_clamp <= 0:
            raise ValueError("gan_weight and r1_gamma must be >= 0 and logit_clamp > 0")

    @property
    def needs_discriminator(self) -> bool:
        return self.gan_weight > 0 or get_divergence(self.divergence).name != "reverse_kl"


class FDistillObjective(nn.Module):
    """Generator and critic losses of f-distill over any schedule and networks.

    Args:
        schedule: the teacher's noise schedule.
        teacher: frozen x̂0_p(x_t, t, condition, guidance_scale=…) (a :class:`~fdistill.Denoiser`).
        fake_score: trainable x̂0_q(x_t, t, condition), initialised from the teacher where possible.
        discriminator: logits D(x_t, t, condition) → (B,), e.g. a head on frozen teacher features;
            None only for reverse-KL without a GAN term.
    """

    def __init__(self, schedule: NoiseSchedule, teacher: X0Model, fake_score: nn.Module,
                 discriminator: nn.Module | None, config: ObjectiveConfig):
        super().__init__()
        if discriminator is None and config.needs_discriminator:
            raise ValueError(f"divergence {config.divergence!r} / gan_weight {config.gan_weight} need a discriminator")
        self.schedule, self.teacher, self.config = schedule, teacher, config
        self.fake_score, self.discriminator = fake_score, discriminator
        self.divergence = get_divergence(config.divergence)
        self.ratio_normalizer = RatioNormalizer(config.ratio_bins, config.ratio_decay)

    def _noise(self, x0: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        t = self.schedule.sample_training_t(x0.shape[0], generator, x0.device)
        t = t.clamp(self.schedule.t_min, self.schedule.t_max)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return self.schedule.add_noise(x0, eps, t), t

    def weights(self, logits: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(h, r): normalised divergence weights and the raw density ratio, from logits (B,)."""
        c = self.config
        r = density_ratio(logits, c.logit_clamp, c.r_min, c.r_max)
        r_n = self.ratio_normalizer(r, self.schedule.t_fraction(t)) if c.normalize_ratio else r
        h = self.divergence.h(r_n)
        return (normalize_weights(h) if c.normalize_h else h), r

    def generator_loss(self, x0: Tensor, condition: Tensor | None = None,
                       generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """L_G for student samples x0 (B, ...) that carry the generator's graph."""
        c = self.config
        x_t, t = self._noise(x0, generator)
        with torch.no_grad():
            x0_real = self.teacher(x_t, t, condition, guidance_scale=c.guidance_scale)
            x0_fake = self.fake_score(x_t, t, condition)
        logs: dict[str, float] = {}
        h, gan = None, x0.new_zeros(())
        if self.discriminator is not None and c.needs_discriminator:
            logits = self.discriminator(x_t, t, condition)
            if self.divergence.name != "reverse_kl":
                h, r = self.weights(logits, t)
                logs.update(r_mean=r.mean().item(), h_max=h.max().item())
            if c.gan_weight > 0:
                gan = losses.generator_gan_loss(logits)
                logs["gan_g"] = gan.item()
        dm = losses.distribution_matching_loss(x0, x0_real, x0_fake, h)
        logs["dm"] = dm.item()
        return dm + c.gan_weight * gan, logs

    def critic_loss(self, x0_fake: Tensor, x0_real: Tensor | None = None, condition: Tensor | None = None,
                    condition_real: Tensor | None = None,
                    generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """Fake-score denoising loss on sg(student samples) + discriminator loss against real data."""
        x0_fake = x0_fake.detach()
        x_t, t = self._noise(x0_fake, generator)
        fake = losses.denoising_loss(self.fake_score(x_t, t, condition), x0_fake,
                                     self.schedule.x0_loss_weight(t))
        logs = {"fake_score": fake.item()}
        loss = fake
        if self.discriminator is not None and self.config.needs_discriminator:
            if x0_real is None:
                raise ValueError("the discriminator needs real samples x0_real")
            eps = torch.randn(x0_real.shape, generator=generator, device=x0_real.device, dtype=x0_real.dtype)
            t_real = t[: x0_real.shape[0]] if x0_real.shape[0] <= t.shape[0] else self._noise(x0_real, generator)[1]
            r1 = self.config.r1_gamma > 0
            x_t_real = self.schedule.add_noise(x0_real, eps, t_real).requires_grad_(r1)
            # R1 differentiates twice; fused attention kernels have no double backward, the math one does
            with sdpa_kernel(SDPBackend.MATH) if r1 else contextlib.nullcontext():
                logits_real = self.discriminator(x_t_real, t_real, condition_real)
            logits_fake = self.discriminator(x_t.detach(), t, condition)
            d = losses.discriminator_loss(logits_real, logits_fake)
            logs.update(disc=d.item(), d_real=logits_real.mean().item(), d_fake=logits_fake.mean().item())
            loss = loss + d
            if r1:
                r1 = losses.r1_penalty(logits_real, x_t_real, self.config.r1_gamma)
                logs["r1"] = r1.item()
                loss = loss + r1
        return loss, logs
