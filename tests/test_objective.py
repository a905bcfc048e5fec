"""The objective's central claim, checked where every term is known exactly (Gaussian mixtures).

With exact mixture denoisers as the teacher (p) and the fake score (q) and a discriminator of fixed
logits, the generator's gradient on its samples is h(r)/mean h · (x̂0_q − x̂0_p) / mean|x0 − x̂0_p| / numel
(DMD's per-sample scale, the paper's weighting), for every divergence's h.
"""

import pytest
import torch
from torch import nn

from fdistill.divergences import get_divergence
from fdistill.gmm import GaussianMixture, GaussianMixtureDenoiser
from fdistill.objective import FDistillObjective, ObjectiveConfig
from fdistill.schedules import EDMSchedule


class FixedLogits(nn.Module):
    """A discriminator that says the same logit for each sample, whatever x_t."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, x_t, t, condition=None):
        return self.logits


@pytest.mark.parametrize("divergence", ["jensen_shannon", "forward_kl", "reverse_kl", "alpha:1.5"])
def test_generator_gradient_is_the_weighted_score_difference(divergence):
    schedule = EDMSchedule(sigma_data=1.0)
    p = GaussianMixture([[-2.0, 0.0], [2.0, 0.0]], 0.5, [0.5, 0.5])
    q = GaussianMixture([[-1.5, 0.5], [2.5, 0.0]], 0.7, [0.7, 0.3])
    logits = torch.tensor([-1.0, 0.0, 0.5, 1.5, -0.3, 2.0])
    config = ObjectiveConfig(divergence=divergence, gan_weight=0.0, normalize_ratio=False)
    objective = FDistillObjective(schedule, GaussianMixtureDenoiser(p, schedule), GaussianMixtureDenoiser(q, schedule),
                                  FixedLogits(logits), config, features_from=None)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 2, generator=g).requires_grad_(True)
    t, eps = torch.full((6,), 0.8), torch.randn(6, 2, generator=g)
    loss, logs = objective.generator_loss(x0, None, t, eps)
    loss.backward()

    x_t = x0.detach() + 0.8 * eps
    x0_p = GaussianMixtureDenoiser(p, schedule)(x_t, t)
    x0_q = GaussianMixtureDenoiser(q, schedule)(x_t, t)
    h = get_divergence(divergence).h(logits.exp()).expand(6)
    h = h / h.mean()
    scale = (x0.detach() - x0_p).abs().mean(1, keepdim=True)
    expected = h[:, None] * (x0_q - x0_p) / scale / x0.numel()
    torch.testing.assert_close(x0.grad, expected, rtol=1e-5, atol=1e-8)
    if divergence != "reverse_kl":  # the weights really differ between samples
        assert float(logs["h_spread"]) > 0.1


def test_with_r_equal_one_every_divergence_gives_reverse_kls_gradient():
    """logits ≡ 0 ⇒ r ≡ 1 ⇒ h(1)/mean h = 1: JS, forward-KL and reverse-KL take the same step."""
    schedule = EDMSchedule(sigma_data=1.0)
    p = GaussianMixture([[-2.0, 0.0], [2.0, 0.0]], 0.5)
    q = GaussianMixture([[-1.0, 0.0], [1.0, 0.0]], 0.5)
    grads = {}
    for divergence in ("reverse_kl", "jensen_shannon", "forward_kl"):
        objective = FDistillObjective(schedule, GaussianMixtureDenoiser(p, schedule),
                                      GaussianMixtureDenoiser(q, schedule), FixedLogits(torch.zeros(5)),
                                      ObjectiveConfig(divergence=divergence, gan_weight=0.0), features_from=None)
        x0 = torch.randn(5, 2, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        t, eps = torch.full((5,), 0.5), torch.randn(5, 2, generator=torch.Generator().manual_seed(2))
        objective.generator_loss(x0, None, t, eps)[0].backward()
        grads[divergence] = x0.grad
    torch.testing.assert_close(grads["jensen_shannon"], grads["reverse_kl"], rtol=1e-6, atol=0)
    torch.testing.assert_close(grads["forward_kl"], grads["reverse_kl"], rtol=1e-6, atol=0)
