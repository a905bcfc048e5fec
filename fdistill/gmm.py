"""Gaussian mixtures with exact noised marginals: the testbed whose answer is known.

p_0 = Σ_k w_k N(μ_k, diag(s_k²)) noised by x_t = α x0 + σ ε has the marginal
p_t = Σ_k w_k N(α μ_k, diag(α² s_k² + σ²)) and the posterior mean
E[x0 | x_t] = Σ_k γ_k(x_t) (μ_k + α s_k² / (α² s_k² + σ²) · (x_t − α μ_k)).
Also here: a seeded irregular mixture (:func:`random_mixture`) and the measures of a sample set
against a mixture (:func:`mode_metrics`: mode masses, coverage, TV, precision, mode widths).
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
