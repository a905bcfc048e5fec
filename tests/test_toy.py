import pytest
import torch

from fdistill.toy import GaussianMixture, distill_gmm, mode_metrics


def test_mode_metrics_on_known_samples():
    gmm = GaussianMixture([[-4.0, 0.0], [4.0, 0.0]], 0.5, [0.75, 0.25])
    x = torch.tensor([[-4.0, 0.0]] * 6 + [[4.0, 0.1]] * 2 + [[0.0, 0.0]] * 2)
    m = mode_metrics(gmm, x)
    assert m["mode_mass"] == [0.6, 0.2]
    assert m["modes_covered"] == 2 and m["precision"] == pytest.approx(0.8)
    assert m["tv"] == pytest.approx(0.5 * (0.15 + 0.05 + 0.2))


def test_distill_gmm_runs_the_shared_objective():
    gmm = GaussianMixture([[-3.0, 0.0], [3.0, 0.0]], 0.3, [0.7, 0.3])
    res = distill_gmm(gmm, "js", steps=20, seed=0, warmup_steps=300, fake_warmup_steps=20, batch_size=128,
                      ode_pairs=1024, ode_steps=16, eval_samples=2000, critic_steps=1, width=32)
    assert res.samples.shape == (2000, 2)
    assert res.metrics["modes_covered"] == 2 and res.metrics["precision"] > 0.6
    assert {"r_mean", "h_max", "dm", "disc"} <= set(res.history[-1])
    assert "ratio_check" in res.metrics


def test_distill_gmm_rejects_unknown_options():
    gmm = GaussianMixture.ring(4)
    with pytest.raises(ValueError, match="unknown option"):
        distill_gmm(gmm, "js", bogus=1)
    with pytest.raises(ValueError, match="unknown divergence"):
        distill_gmm(gmm, "nope", steps=1)
