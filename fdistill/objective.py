"""The f-distill objective: one algorithm for every f (the divergence is a parameter).

Generator step (student x0 = G(z), gradients only through x0):
    x_t = α_t x0 + σ_t ε
    x̂0_p, φ = teacher(x_t),  x̂0_q = fake(x_t)              (x̂0 detached; one teacher forward)
    D = head(φ)                                               (grad to x_t for the GAN term)
    r = exp(D) clipped, r ← r / EMA_bin(r),  h ← h(r) / mean h
    L_G = DM(x0, x̂0_p, x̂0_q; h) + λ_GAN softplus(−D)

Critic step (student samples detached):
    L_fake = λ(t) ‖fake(x_t) − x0‖²,   L_D = softplus(D(x_t^fake)) + softplus(−D(x_t^real)) + R1
Reverse-KL (h ≡ 1 in the registry) with λ_GAN = 0 is DMD; with a GAN term it is DMD2. The
divergence enters only through h: no code path depends on its name.
"""

from __future__ import annotations

import contextlib
import math
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
    """Hyper-parameters of the objective (paper defaults: JS, GAN weight 1e-3…3e-3).

    ``t_shift``: training times t ← t·exp(t_shift) (then clamped); on EDM (t = σ) that moves the
    log-normal's mean, so −1 takes the median σ from 0.30 to 0.11, where real and student samples
    differ most. ``independent_real_t``: the discriminator's real batch gets its own times (else
    the student batch's). ``ratio_decay``: EMA of the per-bin ratio normaliser (0 = this batch only).
    """

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
    t_shift: float = 0.0
    independent_real_t: bool = True

    def __post_init__(self):
        get_divergence(self.divergence)
        if not 0 < self.r_min < self.r_max:
            raise ValueError(f"need 0 < r_min < r_max, got r_min={self.r_min}, r_max={self.r_max}")
        if self.gan_weight < 0 or self.r1_gamma < 0 or self.logit_clamp <= 0:
            raise ValueError("gan_weight and r1_gamma must be >= 0 and logit_clamp > 0")
        if not 0 <= self.ratio_decay < 1:
            raise ValueError(f"ratio_decay must be in [0, 1) (0 = per-batch normaliser), got {self.ratio_decay}")

    @property
    def needs_discriminator(self) -> bool:
        """A GAN term, or a divergence whose weights h(r) depend on r (reverse-KL: h ≡ 1)."""
        return self.gan_weight > 0 or not get_divergence(self.divergence).constant_h


class FDistillObjective(nn.Module):
    """Generator and critic losses of f-distill over any schedule and networks.

    Args:
        schedule: the teacher's noise schedule.
        teacher: frozen x̂0_p(x_t, t, condition, guidance_scale=…) (a :class:`~fdistill.Denoiser`).
        fake_score: trainable x̂0_q(x_t, t, condition), initialised from the teacher where possible.
        discriminator: logits D(x_t, t, condition) → (B,), e.g. a head on frozen teacher features;
            None only for reverse-KL without a GAN term.
        features_from: ``"teacher"`` or ``"fake"`` when ``discriminator`` is a
            :class:`~fdistill.models.discriminator.FeatureDiscriminator` on that network: its
            features are then read off the forward that computes x̂0 (one network evaluation for
            both); None: the discriminator runs its own forward.

    Random draws are the caller's (:meth:`noise`), so a trainer can draw a global batch and split it.
    """

    def __init__(self, schedule: NoiseSchedule, teacher: X0Model, fake_score: nn.Module,
                 discriminator: nn.Module | None, config: ObjectiveConfig, features_from: str | None = None):
        super().__init__()
        if discriminator is None and config.needs_discriminator:
            raise ValueError(f"divergence {config.divergence!r} / gan_weight {config.gan_weight} need a discriminator")
        if features_from not in (None, "teacher", "fake"):
            raise ValueError(f"features_from {features_from!r} is not one of None, 'teacher', 'fake'")
        self.schedule, self.teacher, self.config = schedule, teacher, config
        self.fake_score = fake_score
        self.discriminator = discriminator if config.needs_discriminator else None
        self.features_from = features_from if self.discriminator is not None else None
        self.divergence = get_divergence(config.divergence)
        self.ratio_normalizer = RatioNormalizer(config.ratio_bins, config.ratio_decay)

    def noise(self, n: int, shape: tuple[int, ...], generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(t, ε): n training times (n,) from the schedule's distribution shifted by ``t_shift``, ε (n, *shape)."""
        s = self.schedule
        t = (s.sample_training_t(n, generator) * math.exp(self.config.t_shift)).clamp(s.t_min, s.t_max)
        return t, torch.randn(n, *shape, generator=generator)

    def weights(self, logits: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(h, r): normalised divergence weights and the raw density ratio, from logits (B,)."""
        c = self.config
        r = density_ratio(logits, c.logit_clamp, c.r_min, c.r_max)
        r_n = self.ratio_normalizer(r, self.schedule.t_fraction(t)) if c.normalize_ratio else r
        h = self.divergence.h(r_n)
        return (normalize_weights(h) if c.normalize_h else h), r

    def _x0(self, net: X0Model, x_t: Tensor, t: Tensor, condition: Tensor | None, taps: bool, grad: bool,
            **kwargs) -> tuple[Tensor, list[Tensor] | None]:
        """x̂0 of ``net`` (detached) and, when ``taps``, its tapped features (with grad when ``grad``)."""
        with torch.set_grad_enabled(grad and taps and torch.is_grad_enabled()):
            out = net(x_t, t, condition, **kwargs, **({"features": True} if taps else {}))
        x0, feats = out if taps else (out, None)
        return x0.detach(), feats

    def generator_loss(self, x0: Tensor, condition: Tensor | None, t: Tensor,
                       eps: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """L_G for student samples x0 (B, ...) that carry the generator's graph; t (B,), ε like x0."""
        c, disc = self.config, self.discriminator
        gan = disc is not None and c.gan_weight > 0
        x_t = self.schedule.add_noise(x0, eps.to(x0), t)
        x0_p, feats_p = self._x0(self.teacher, x_t, t, condition, self.features_from == "teacher", gan,
                                 guidance_scale=c.guidance_scale)
        x0_q, feats_q = self._x0(self.fake_score, x_t, t, condition, self.features_from == "fake", gan)
        logs: dict[str, Tensor] = {}
        h, loss = None, x0.new_zeros(())
        if disc is not None:
            feats = feats_p if feats_p is not None else feats_q
            with torch.set_grad_enabled(gan and torch.is_grad_enabled()):  # r alone is read without a gradient
                logits = disc.head(feats) if feats is not None else disc(x_t, t, condition)
            h, r = self.weights(logits, t)
            h_d = h.detach().float()
            logs.update(r_mean=r.mean(), h_max=h_d.max(), h_spread=h_d.std(unbiased=False) / h_d.mean().clamp_min(1e-12))
            if gan:
                g = losses.generator_gan_loss(logits)
                logs["gan_g"] = g.detach()
                loss = c.gan_weight * g
        dm = losses.distribution_matching_loss(x0, x0_p, x0_q, h)
        logs["dm"] = dm.detach()
        return dm + loss, logs

    def critic_loss(self, x0_fake: Tensor, condition: Tensor | None, t: Tensor, eps: Tensor,
                    x0_real: Tensor | None = None, condition_real: Tensor | None = None,
                    t_real: Tensor | None = None, eps_real: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Fake-score denoising loss on sg(student samples) + discriminator loss against real data.

        x0_fake (B, ...) with (t, ε) of :meth:`noise`; x0_real (B', ...) with its own (t_real, ε_real)
        (t_real is replaced by t[:B'] unless ``independent_real_t``).
        """
        c, disc = self.config, self.discriminator
        x0_fake = x0_fake.detach()
        x_t = self.schedule.add_noise(x0_fake, eps.to(x0_fake), t)
        tap_fake = self.features_from == "fake"
        out = self.fake_score(x_t, t, condition, **({"features": True} if tap_fake else {}))
        x0_q, feats = out if tap_fake else (out, None)
        fake = losses.denoising_loss(x0_q, x0_fake, self.schedule.x0_loss_weight(t))
        logs = {"fake_score": fake.detach()}
        if disc is None:
            return fake, logs
        if x0_real is None or eps_real is None:
            raise ValueError("the discriminator needs real samples x0_real and their noise eps_real")
        if self.features_from == "teacher":
            with torch.no_grad():  # frozen trunk, detached input: the head alone learns from these
                _, feats = self.teacher(x_t, t, condition, guidance_scale=1.0, features=True)
        logits_fake = disc.head(feats) if feats is not None else disc(x_t, t, condition)
        if t_real is None or not c.independent_real_t:
            t_real = t[: x0_real.shape[0]]
        r1 = c.r1_gamma > 0
        x_t_real = self.schedule.add_noise(x0_real, eps_real.to(x0_real), t_real).requires_grad_(r1)
        # R1 differentiates twice; fused attention kernels have no double backward, the math one does
        with sdpa_kernel(SDPBackend.MATH) if r1 else contextlib.nullcontext():
            logits_real = disc(x_t_real, t_real, condition_real)
        d = losses.discriminator_loss(logits_real, logits_fake)
        logs.update(disc=d.detach(), d_real=logits_real.detach().mean(), d_fake=logits_fake.detach().mean())
        loss = fake + d
        if r1:
            penalty = losses.r1_penalty(logits_real, x_t_real, c.r1_gamma)
            logs["r1"] = penalty.detach()
            loss = loss + penalty
        return loss, logs
