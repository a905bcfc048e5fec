"""The Gaussian-mixture toy's networks: MLPs on 2-D points (generator, fake score, discriminator)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..schedules import EDMSchedule

__all__ = ["Discriminator", "FourierMLP", "mlp"]


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
