import json
import math

import pytest
import torch
from torch import nn

from fdistill.gmm import GaussianMixture, mode_metrics, random_mixture
from fdistill.gmm_diagnostics import OracleDiscriminator, log_kde
from fdistill.training.config import ConfigError
from fdistill.training.toy import GMMConfig, distill_gmm, warm_start

TINY = {"warmup.steps": 300, "critic_warmup_steps": 10, "batch_size": 128, "warmup.ode_pairs": 1024,
        "warmup.ode_steps": 16, "eval_samples": 1000, "critic_steps": 1, "width": 32, "discriminator.hidden": 32,
        "eval_every": 5, "check_samples": 1024}


@pytest.fixture(autouse=True)
def one_thread():
    # tiny MLPs: a second thread only adds synchronisation (5x slower on a busy 2-core machine)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_mode_metrics_on_known_samples():
    gmm = GaussianMixture([[-4.0, 0.0], [4.0, 0.0]], 0.5, [0.75, 0.25])
    x = torch.tensor([[-4.0, 0.0]] * 6 + [[4.0, 0.1]] * 2 + [[0.0, 0.0]] * 2)
    m = mode_metrics(gmm, x)
    assert m["mode_mass"] == [0.6, 0.2]
    assert m["modes_covered"] == 2 and m["precision"] == pytest.approx(0.8)
    assert m["tv"] == pytest.approx(0.5 * (0.15 + 0.05 + 0.2))


def test_mode_metrics_tell_a_wide_mode_from_a_lost_one():
    gmm = GaussianMixture([[-4.0, 0.0], [4.0, 0.0]], [0.5, 0.1], [0.5, 0.5])
    wide = GaussianMixture(gmm.means, [0.5, 0.3], [0.5, 0.5])  # mode 1 three times too wide, its mass kept
    m = mode_metrics(gmm, wide.sample(20000, torch.Generator().manual_seed(0))[0])
    assert m["mode_width"] == pytest.approx([1.0, 3.0], rel=0.05)
    assert m["mode_mass_nearest"] == pytest.approx([0.5, 0.5], abs=0.02) and m["tv_nearest"] < 0.02
    assert m["mode_mass"][1] < 0.3 and m["tv"] > 0.2  # within 3σ of mode 1 most of it looks lost


def test_random_mixture_is_seeded_with_one_narrow_mode():
    a, b, c = random_mixture(3), random_mixture(3), random_mixture(4)
    torch.testing.assert_close(a.means, b.means)
    torch.testing.assert_close(a.stds, b.stds)
    torch.testing.assert_close(a.weights, b.weights)
    assert not torch.allclose(a.means, c.means)
    for seed in range(5):
        m = random_mixture(seed, num_modes=5, std=0.3, narrow=5.0, min_distance=2.0)
        stds = m.stds[:, 0].sort().values
        assert m.num_modes == 5 and stds[0] == pytest.approx(0.06)
        assert 0.8 * 0.3 <= stds[1] and stds[-1] <= 1.25 * 0.3  # every other mode 4-6x wider
        assert torch.pdist(m.means).min() >= 2.0 and m.means.norm(dim=1).max() <= 4.0
        assert m.weights.max() / m.weights.min() <= 4.0 + 1e-5
    with pytest.raises(ValueError, match="could not place"):
        random_mixture(0, num_modes=8, radius=1.0, min_distance=2.0)
    with pytest.raises(ValueError, match="narrow"):
        random_mixture(0, narrow=0.5)


def test_generator_depth_sets_the_generator_layers():
    gmm = GaussianMixture([[-3.0, 0.0], [3.0, 0.0]], 0.3)
    kw = {**TINY, "warmup.steps": 2, "critic_warmup_steps": 1}
    linear = [k for k in warm_start(gmm, seed=0, generator_depth=5, **kw).student if k.endswith("weight")]
    assert len(linear) == 6  # 5 hidden layers and the output layer (default depth 3: 4)
    assert len([k for k in warm_start(gmm, seed=0, **kw).student if k.endswith("weight")]) == 4
    with pytest.raises(ValueError, match="generator_depth"):
        GMMConfig(generator_depth=0)


def test_log_kde_is_the_noised_empirical_density():
    ref = torch.randn(5, 2)
    x, sigma = torch.randn(7, 2), 0.7
    exact = GaussianMixture(ref, sigma).log_prob(x)
    torch.testing.assert_close(log_kde(x, ref, sigma, chunk=3), exact)
    torch.testing.assert_close(log_kde(x, ref, torch.full((7,), sigma)), exact)


def test_oracle_discriminator_returns_the_true_log_ratio():
    # student x0 = z (a unit Gaussian at 0), teacher a unit Gaussian at (1, 0): log r is analytic
    teacher = GaussianMixture([[1.0, 0.0]], 1.0)
    oracle = OracleDiscriminator(teacher, nn.Identity(), dim=2, num_ref=20000)
    x, sigma = torch.randn(64, 2) * 0.5, 1.0
    var = 1.0 + sigma**2
    true = (-((x - torch.tensor([1.0, 0.0])) ** 2).sum(1) + (x**2).sum(1)) / (2 * var)
    assert (oracle(x, torch.tensor(sigma)) - true).abs().mean() < 0.05
    oracle.skip = True
    assert (oracle(x, torch.tensor(sigma)) == 0).all()


def test_distill_gmm_runs_the_shared_objective():
    gmm = GaussianMixture([[-3.0, 0.0], [3.0, 0.0]], 0.3, [0.7, 0.3])
    res = distill_gmm(gmm, "js", steps=10, seed=0, **TINY)
    assert res.samples.shape == (1000, 2)
    assert res.metrics["modes_covered"] == 2 and res.metrics["precision"] > 0.6
    assert {"r_mean", "h_max", "dm", "disc", "tv", "dropped_mass"} <= set(res.history[-1])
    assert [h["step"] for h in res.history] == [0, 5, 10]
    check = res.metrics["ratio_check"]["sigma_1"]
    assert {"corr", "corr_p", "mae", "disc_loss", "bayes_loss"} <= set(check)
    assert all(math.isfinite(v) for v in check.values())


def test_warm_start_is_shared_across_divergences():
    gmm = GaussianMixture([[-3.0, 0.0], [3.0, 0.0]], 0.3, [0.9, 0.1])
    drop = {**TINY, "warmup.drop_modes": (1,)}
    warm = warm_start(gmm, seed=1, **drop)
    assert warm.metrics["mode_mass"][1] == 0.0  # the ODE pairs lack mode 1
    a = distill_gmm(gmm, "reverse_kl", steps=3, seed=1, init=warm, **drop)
    b = distill_gmm(gmm, "reverse_kl", steps=3, seed=1, **drop)
    torch.testing.assert_close(a.samples, b.samples)
    assert a.metrics["dropped_weight"] == pytest.approx(0.1)
    assert "ratio_check" not in a.metrics  # reverse-KL reads no ratio, so it trains no discriminator
    with pytest.raises(ValueError, match="warm start"):
        distill_gmm(gmm, "js", steps=1, seed=1, init=warm, **TINY)


def test_warm_start_cache_is_keyed_by_its_settings(tmp_path):
    gmm = GaussianMixture([[-3.0, 0.0], [3.0, 0.0]], 0.3, [0.7, 0.3])
    kw = {**TINY, "warmup.steps": 3, "critic_warmup_steps": 1}
    made = warm_start(gmm, seed=0, cache_dir=tmp_path, **kw)
    assert len(list(tmp_path.glob("gmm_warm_start-*.safetensors"))) == 1
    again = warm_start(gmm, seed=0, cache_dir=tmp_path, **kw)  # read back, not retrained
    torch.testing.assert_close(again.samples, made.samples, rtol=0, atol=0)
    assert again.student.keys() == made.student.keys() and again.metrics == made.metrics
    warm_start(gmm, seed=0, cache_dir=tmp_path, **{**kw, "warmup.steps": 4})
    assert len(list(tmp_path.glob("gmm_warm_start-*.safetensors"))) == 2  # another setting, another entry


def test_distill_gmm_rejects_unknown_and_renamed_options():
    gmm = GaussianMixture.ring(4)
    with pytest.raises(ConfigError, match="unknown key"):
        distill_gmm(gmm, "js", bogus=1)
    with pytest.raises(ValueError, match="unknown divergence"):
        distill_gmm(gmm, "nope", steps=1)
    for old, new in [("warmup_steps", "warmup.steps"), ("fake_warmup_steps", "critic_warmup_steps"),
                     ("drop_modes", "warmup.drop_modes"), ("objective_gan_weight", "objective.gan_weight"),
                     ("discriminator", "oracle_discriminator=True")]:
        with pytest.raises(ConfigError, match=f"renamed setting: {old}.*{new}"):
            distill_gmm(gmm, "js", steps=1, **{old: "oracle" if old == "discriminator" else 1})


@pytest.mark.parametrize("oracle", [False, True])
def test_killed_toy_run_resumes_bit_exactly(tmp_path, oracle):
    gmm = GaussianMixture([[-3.0, 0.0], [3.0, 0.0]], 0.3, [0.7, 0.3])
    kw = {**TINY, "warmup.steps": 20, "critic_warmup_steps": 2, "eval_every": 2, "checkpoint_every": 4,
          "oracle_ref": 256, "oracle_discriminator": oracle}
    init = warm_start(gmm, seed=0, **kw)
    full = distill_gmm(gmm, "forward_kl", 8, 0, init=init, output_dir=str(tmp_path / "full"), **kw)
    cut = distill_gmm(gmm, "forward_kl", 4, 0, init=init, output_dir=str(tmp_path / "cut"), **kw)
    with (tmp_path / "cut" / "history.jsonl").open("a") as f:  # killed after step 6's row, before checkpoint 8
        f.write(json.dumps({**cut.history[-1], "step": 6}) + '\n{"step": 7, "tv"')  # the last row cut in half
    resumed = distill_gmm(gmm, "forward_kl", 8, 0, init=init, output_dir=str(tmp_path / "cut"), resume="latest", **kw)
    torch.testing.assert_close(resumed.samples, full.samples, rtol=0, atol=0)
    assert [r["step"] for r in resumed.history] == [r["step"] for r in full.history] == [0, 2, 4, 6, 8]
    assert resumed.history == full.history
    with pytest.raises(ValueError, match="needs output_dir"):
        distill_gmm(gmm, "forward_kl", 2, 0, init=init, resume="latest", **kw)
