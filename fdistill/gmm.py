"""Gaussian mixtures with exact noised marginals: the testbed whose answer is known.

p_0 = Σ_k w_k N(μ_k, diag(s_k²)) noised by x_t = α x0 + σ ε has the marginal
p_t = Σ_k w_k N(α μ_k, diag(α² s_k² + σ²)) and the posterior mean
E[x0 | x_t] = Σ_k γ_k(x_t) (μ_k + α s_k² / (α² s_k² + σ²) · (x_t − α μ_k)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .schedules import NoiseSchedule, expand_t


class GaussianMixture(nn.Module):
    """A mixture of axis-aligned Gaussians in D dimensions.

    means: (K, D); stds: scalar, (K,) or (K, D); weights: (K,) (normalised here).
    """

    means: Tensor
    stds: Tensor
    weights: Tensor

    def __init__(self, means: Sequence | Tensor, stds: float | Sequence | Tensor, weights: Sequence | Tensor | None = None):
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float32)
        if means.ndim != 2:
            raise ValueError(f"means must be (K, D), got shape {tuple(means.shape)}")
        K, D = means.shape
        stds = torch.as_tensor(stds, dtype=torch.float32)
        stds = stds.expand(K, D) if stds.ndim == 0 else (stds[:, None].expand(K, D) if stds.ndim == 1 else stds)
        if stds.shape != (K, D) or (stds <= 0).any():
            raise ValueError(f"stds must be positive and broadcast to {(K, D)}, got shape {tuple(stds.shape)}")
        weights = torch.ones(K) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        if weights.shape != (K,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"weights must be {K} non-negative numbers with a positive sum")
        self.register_buffer("means", means)
        self.register_buffer("stds", stds.contiguous())
        self.register_buffer("weights", weights / weights.sum())

    @classmethod
    def ring(cls, num_modes: int = 8, radius: float = 4.0, std: float = 0.2, weights: Sequence | None = None):
        """``num_modes`` modes evenly on a circle."""
        angle = torch.arange(num_modes) * (2 * math.pi / num_modes)
        return cls(torch.stack([angle.cos(), angle.sin()], 1) * radius, std, weights)

    @property
    def num_modes(self) -> int:
        return self.means.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n samples (n, D) and their mode indices (n,)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.means.shape[1], generator=generator)
        return self.means[k] + self.stds[k] * eps, k

    def _components(self, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """log(w_k N(x_t; α μ_k, α² s_k² + σ²)) (B, K) and per-component variances (B, K, D)."""
        a, s = alpha.reshape(-1, 1, 1), sigma.reshape(-1, 1, 1)
        var = a**2 * self.stds**2 + s**2
        diff = x_t[:, None, :] - a * self.means
        logn = -0.5 * (diff**2 / var + var.log() + math.log(2 * math.pi)).sum(-1)
        return logn + self.weights.clamp_min(1e-30).log(), var

    def log_prob(self, x_t: Tensor, alpha: Tensor | float = 1.0, sigma: Tensor | float = 0.0) -> Tensor:
        """log p_t(x_t) of the noised mixture; x_t (B, D), α/σ scalars or (B,)."""
        alpha = torch.as_tensor(alpha, dtype=x_t.dtype).expand(x_t.shape[0])
        sigma = torch.as_tensor(sigma, dtype=x_t.dtype).expand(x_t.shape[0])
        logc, _ = self._components(x_t, alpha, sigma)
        return logc.logsumexp(-1)

    def posterior_mean(self, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """E[x0 | x_t] (B, D)."""
        logc, var = self._components(x_t, alpha, sigma)
        gamma = logc.softmax(-1)[..., None]
        a = alpha.reshape(-1, 1, 1)
        mean_k = self.means + a * self.stds**2 / var * (x_t[:, None, :] - a * self.means)
        return (gamma * mean_k).sum(1)

    def assign(self, x: Tensor, num_std: float = 3.0) -> Tensor:
        """Nearest mode of each sample, or −1 when it lies farther than ``num_std`` σ from it."""
        d = ((x[:, None, :] - self.means) / self.stds).pow(2).sum(-1).sqrt()
        dist, k = d.min(-1)
        return torch.where(dist <= num_std, k, torch.full_like(k, -1))


class GaussianMixtureDenoiser(nn.Module):
    """Exact x̂0(x_t, t) = E[x0 | x_t] of a :class:`GaussianMixture` under any schedule."""

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule):
        super().__init__()
        self.mixture, self.schedule = mixture, schedule

    def forward(self, x_t: Tensor, t: Tensor, condition: Tensor | None = None,
                guidance_scale: float | None = None) -> Tensor:
        """x̂0 (B, D); the mixture is unconditional, so ``condition``/``guidance_scale`` are ignored."""
        alpha, sigma = self.schedule.alpha_sigma(expand_t(t, x_t[:, 0]).reshape(-1).expand(x_t.shape[0]))
        return self.mixture.posterior_mean(x_t, alpha.to(x_t), sigma.to(x_t))
