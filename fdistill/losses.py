"""Losses of score-based f-divergence distribution matching, each checkable against the paper.

Symbols: x0 = G_θ(z) the student sample, x_t = α_t x0 + σ_t ε, x̂0_p the teacher's (real score's)
x0-prediction at x_t, x̂0_q the fake score's, h = h(r) the divergence weight, D the discriminator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _per_sample_mean(x: Tensor) -> Tensor:
    return x.flatten(1).mean(1)


def _view(w: Tensor, x: Tensor) -> Tensor:
    return w.reshape(-1, *([1] * (x.ndim - 1)))


def distribution_matching_loss(
    x0: Tensor, x0_p: Tensor, x0_q: Tensor, weight: Tensor | None = None, eps: float = 1e-6
) -> Tensor:
    """Generator loss whose gradient is h(r)·(∇log q_t − ∇log p_t) up to a per-sample scale.

    g = h · (x̂0_q − x̂0_p) / mean|x0 − x̂0_p|    (DMD's per-sample normalisation)
    L = ½ ‖x0 − sg(x0 − g)‖²                      (so ∂L/∂x0 = g / numel)

    x0: student samples (B, ...); x0_p: the teacher's x̂0 at their noised version (the data
    distribution p), x0_q: the fake score's (the student's distribution q); weight h: (B,) or None
    (reverse-KL, h ≡ 1).
    """
    with torch.no_grad():
        scale = _per_sample_mean((x0 - x0_p).abs()).clamp_min(eps)
        g = (x0_q - x0_p) / _view(scale, x0)
        if weight is not None:
            g = g * _view(weight.to(g), g)
        g = torch.nan_to_num(g)
        target = x0 - g
    return 0.5 * F.mse_loss(x0.float(), target.float())


def denoising_loss(x0_pred: Tensor, x0: Tensor, weight: Tensor | None = None) -> Tensor:
    """Fake-score (or teacher) loss E[λ(t) ‖x̂0(x_t, t) − x0‖²]; x0 is sg(student sample)."""
    err = _per_sample_mean((x0_pred.float() - x0.detach().float()) ** 2)
    if weight is not None:
        err = err * weight.float()
    return err.mean()


def discriminator_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Non-saturating GAN critic loss softplus(D(fake)) + softplus(−D(real)); optimum σ(D) = p/(p+q)."""
    return F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()


def generator_gan_loss(logits_fake: Tensor) -> Tensor:
    """Non-saturating generator loss softplus(−D(fake))."""
    return F.softplus(-logits_fake).mean()


def r1_penalty(logits_real: Tensor, x_real: Tensor, gamma: float) -> Tensor:
    """R1 = γ/2 · E‖∇_x D(x_real)‖²; ``x_real`` must require grad and produce ``logits_real``."""
    (grad,) = torch.autograd.grad(logits_real.sum(), x_real, create_graph=True)
    return 0.5 * gamma * grad.flatten(1).pow(2).sum(1).mean()
