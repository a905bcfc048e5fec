"""The density ratio r = p_t/q_t from a discriminator, and f-distill's two-stage normalisation.

A discriminator trained with the non-saturating loss softplus(D(fake)) + softplus(−D(real)) has
σ(D) = p/(p + q) at its optimum, so r = p/q = exp(D). The paper stabilises h(r) by
(1) dividing r by an EMA of its mean within a time bin, and (2) dividing h by its batch mean.
Both statistics are all-reduced across ranks, so every process uses the same normaliser.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum a statistic (not a gradient: those are accelerate's) over all ranks; identity in one process."""
    if _distributed():
        from accelerate.utils import reduce

        x = reduce(x.clone(), "sum")
    return x


def density_ratio(
    logits: Tensor, logit_clamp: float = 10.0, r_min: float = 0.1, r_max: float = 20.0
) -> Tensor:
    """r = exp(clamp(D, ±logit_clamp)) clipped to [r_min, r_max]; logits (B,) → r (B,)."""
    return logits.detach().float().clamp(-logit_clamp, logit_clamp).exp().clamp(r_min, r_max)


class RatioNormalizer(nn.Module):
    """Stage 1: r ← r / EMA_bin(mean r), with ``num_bins`` equal bins over t ∈ [t_min, t_max].

    The EMA lives in buffers, so it is part of ``state_dict`` (and of every checkpoint).
    Per-bin sums and counts are all-reduced before the update.
    """

    ema: Tensor
    seen: Tensor

    def __init__(self, num_bins: int = 10, decay: float = 0.99):
        super().__init__()
        if num_bins < 1 or not 0.0 <= decay < 1.0:
            raise ValueError(f"need num_bins >= 1 and 0 <= decay < 1, got {num_bins}, {decay}")
        self.num_bins, self.decay = num_bins, decay
        self.register_buffer("ema", torch.ones(num_bins))
        self.register_buffer("seen", torch.zeros(num_bins, dtype=torch.bool))

    def bins(self, t_fraction: Tensor) -> Tensor:
        return (t_fraction * self.num_bins).long().clamp(0, self.num_bins - 1)

    @torch.no_grad()
    def update(self, r: Tensor, t_fraction: Tensor) -> None:
        """Fold the batch's per-bin mean of r into the EMA (all ranks agree afterwards)."""
        b = self.bins(t_fraction.to(self.ema.device))
        stats = torch.zeros(2, self.num_bins, device=self.ema.device)
        stats[0].index_add_(0, b, r.to(stats))
        stats[1].index_add_(0, b, torch.ones_like(r, dtype=stats.dtype))
        stats = all_reduce_sum(stats)
        hit = stats[1] > 0  # masks, not boolean indexing: no host sync
        mean = stats[0] / stats[1].clamp_min(1)
        new = torch.where(self.seen, self.decay * self.ema + (1 - self.decay) * mean, mean)
        self.ema.copy_(torch.where(hit, new, self.ema))
        self.seen |= hit

    def forward(self, r: Tensor, t_fraction: Tensor, update: bool = True) -> Tensor:
        """Normalise r (B,) with times as fractions in [0, 1] (B,); updates the EMA first."""
        if update and self.training:
            self.update(r, t_fraction)
        return r / self.ema[self.bins(t_fraction.to(self.ema.device))].to(r)


def normalize_weights(h: Tensor, eps: float = 1e-8) -> Tensor:
    """Stage 2: h ← h / mean(h), the mean taken over the global batch (all ranks)."""
    stats = all_reduce_sum(torch.stack([h.detach().float().sum(), torch.tensor(float(h.numel()), device=h.device)]))
    return h / (stats[0] / stats[1]).clamp_min(eps).to(h)
