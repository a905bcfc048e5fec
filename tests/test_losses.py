import torch

from fdistill import losses
from fdistill.density_ratio import RatioNormalizer, density_ratio, normalize_weights


def test_dm_loss_gradient_is_weighted_score_difference():
    x0 = torch.randn(4, 3, 5, 5, requires_grad=True)
    x0_p, x0_q, h = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5), torch.rand(4) + 0.5
    losses.distribution_matching_loss(x0, x0_p, x0_q, h).backward()
    scale = (x0.detach() - x0_p).abs().flatten(1).mean(1).reshape(-1, 1, 1, 1)
    expected = h.reshape(-1, 1, 1, 1) * (x0_q - x0_p) / scale / x0.numel()
    torch.testing.assert_close(x0.grad, expected)


def test_dm_loss_without_weight_is_reverse_kl():
    x0 = torch.randn(3, 8, requires_grad=True)
    x0_p, x0_q = torch.randn(3, 8), torch.randn(3, 8)
    a = torch.autograd.grad(losses.distribution_matching_loss(x0, x0_p, x0_q), x0)[0]
    b = torch.autograd.grad(losses.distribution_matching_loss(x0, x0_p, x0_q, torch.ones(3)), x0)[0]
    torch.testing.assert_close(a, b)


def test_discriminator_losses_and_r1():
    lr, lf = torch.tensor([0.0, 2.0]), torch.tensor([0.0, -2.0])
    sp = torch.nn.functional.softplus
    expected = sp(lf).mean() + sp(-lr).mean()
    torch.testing.assert_close(losses.discriminator_loss(lr, lf), expected)
    torch.testing.assert_close(losses.generator_gan_loss(lf), sp(-lf).mean())
    x = torch.randn(5, 3, requires_grad=True)
    w = torch.tensor([1.0, -2.0, 0.5])
    r1 = losses.r1_penalty(x @ w, x, gamma=2.0)
    torch.testing.assert_close(r1, w.pow(2).sum())


def test_denoising_loss_weighting():
    pred, x0, w = torch.zeros(2, 4), torch.ones(2, 4), torch.tensor([1.0, 3.0])
    torch.testing.assert_close(losses.denoising_loss(pred, x0, w), torch.tensor(2.0))


def test_density_ratio_clamps():
    r = density_ratio(torch.tensor([-50.0, 0.0, 1.0, 50.0]))
    torch.testing.assert_close(r, torch.tensor([0.1, 1.0, torch.e, 20.0]))


def test_ratio_normalizer_bins_ema_and_state():
    norm = RatioNormalizer(num_bins=2, decay=0.5)
    r, tf = torch.tensor([2.0, 2.0, 4.0]), torch.tensor([0.1, 0.2, 0.9])
    out = norm(r, tf)
    torch.testing.assert_close(norm.ema, torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(out, torch.ones(3))
    norm(torch.tensor([4.0]), torch.tensor([0.0]))
    torch.testing.assert_close(norm.ema, torch.tensor([3.0, 4.0]))
    fresh = RatioNormalizer(num_bins=2, decay=0.5)
    fresh.load_state_dict(norm.state_dict())
    torch.testing.assert_close(fresh.ema, norm.ema)
    assert set(norm.state_dict()) == {"ema", "seen"}


def test_normalize_weights_has_unit_mean():
    h = torch.tensor([1.0, 2.0, 5.0])
    torch.testing.assert_close(normalize_weights(h).mean(), torch.tensor(1.0))
