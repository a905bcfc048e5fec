"""Diagnostics of the density ratio on Gaussian mixtures, where p_t and (by a kernel sum) q_t are known.

:func:`log_kde` estimates the student's noised marginal q_t from its samples; :class:`OracleDiscriminator`
is the optimal discriminator's logit log p_t − log q_t with the learned discriminator's interface (a
diagnostic stand-in: what a divergence does with the true ratio); :func:`ratio_check` compares a
discriminator's log r with the true one per noise level.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .gmm import GaussianMixture
from .losses import discriminator_loss

__all__ = ["OracleDiscriminator", "log_kde", "ratio_check"]


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
