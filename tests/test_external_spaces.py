"""Feature spaces the project did not design ("pixels", "sklearn_mlp") and density/coverage (Naeem et al. 2020)."""

import numpy as np
import pytest
import torch

from fdistill.data import load_digits_tensors
from fdistill.data.digits import load_digits_8x8
from fdistill.eval import (
    ALL_FEATURE_SPACES,
    EXTERNAL_SPACES,
    FEATURE_SPACES,
    density_coverage,
    extract_features,
    fid_from_features,
    sklearn_mlp_predict,
)
from fdistill.eval.external_features import sklearn_digits_mlp, to_sklearn_digits
from fdistill.eval.fid import get_feature_extractor
from fdistill.eval.pipeline_eval import image_metrics


def brute_density_coverage(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """The paper's definitions, one loop per sum."""
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=-1)
    radius = np.sort(d_rr, axis=1)[:, k]  # column 0 is the point itself
    d_fr = np.linalg.norm(fake[:, None] - real[None], axis=-1)
    density = sum(int(d_fr[j, i] < radius[i]) for j in range(len(fake)) for i in range(len(real))) / (k * len(fake))
    coverage = float(np.mean([any(d_fr[j, i] < radius[i] for j in range(len(fake))) for i in range(len(real))]))
    return density, coverage


def test_density_coverage_match_the_definitions():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(60, 3)), rng.normal(size=(45, 3)) * 0.7 + 0.3
    got = density_coverage(real, fake, k=5, batch_size=16)  # batches must not change the sums
    density, coverage = brute_density_coverage(real, fake, 5)
    assert got["density"] == pytest.approx(density, abs=1e-12) and got["coverage"] == pytest.approx(coverage)


def test_density_coverage_see_missing_modes_and_lost_diversity():
    rng = np.random.default_rng(1)
    modes = np.concatenate([rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) + 20])
    same = density_coverage(modes, np.concatenate([rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) + 20]))
    assert 0.8 < same["density"] < 1.2 and same["coverage"] > 0.9
    one_mode = density_coverage(modes, rng.normal(size=(600, 2)))  # all samples on half the data
    assert 0.4 < one_mode["coverage"] < 0.55 and 0.8 < one_mode["density"] < 1.2
    sharp = density_coverage(modes, 0.3 * rng.normal(size=(600, 2)))  # crowding a mode's centre: realistic
    assert sharp["coverage"] < 0.3 and sharp["density"] > 0.8  # samples, little diversity
    assert density_coverage(modes, modes[:10] + 1000.0) == {"density": 0.0, "coverage": 0.0}
    with pytest.raises(ValueError, match="equal D"):
        density_coverage(modes, np.zeros((5, 3)))


def test_external_spaces_are_named_and_resolve():
    assert set(EXTERNAL_SPACES) == {"pixels", "sklearn_mlp"}
    assert ALL_FEATURE_SPACES == (*FEATURE_SPACES, *EXTERNAL_SPACES)
    x, _ = load_digits_tensors("test")
    assert torch.equal(torch.as_tensor(extract_features(x[:7], "pixels")), x[:7].flatten(1).double())
    assert extract_features(x[:7], get_feature_extractor("sklearn_mlp")).shape == (7, 100)
    with pytest.raises(ValueError, match="sklearn_mlp"):  # the message lists every valid name
        get_feature_extractor("sklearn_svm")


def test_sklearn_input_is_the_8x8_digits_and_the_network_is_deterministic():
    x16, _ = load_digits_tensors("test")
    x8, y = load_digits_8x8("test")
    pooled = to_sklearn_digits(x16)
    assert pooled.shape == (len(x16), 64) and pooled.min() >= 0 and pooled.max() <= 16
    # 16x16 digits are bilinear upsamplings of the 8x8 originals: pooling gives them back, slightly blurred
    assert np.abs(pooled - x8.reshape(len(x8), -1).numpy() * 16).mean() < 1.5  # of a 0..16 scale
    mlp = sklearn_digits_mlp()
    assert sklearn_digits_mlp() is mlp  # built once per process
    assert (sklearn_mlp_predict(x16) == y).float().mean() >= 0.9  # held-out digits, through our 16x16 format
    sklearn_digits_mlp.cache_clear()
    try:
        again = sklearn_digits_mlp()
        assert all(np.array_equal(a, b) for a, b in zip(mlp.coefs_, again.coefs_, strict=True))
    finally:
        sklearn_digits_mlp.cache_clear()


def test_external_spaces_rank_corruptions_and_feed_image_metrics():
    x_train, _ = load_digits_tensors("train")
    x_test, _ = load_digits_tensors("test")
    noisy = (x_test + 0.5 * torch.randn(x_test.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    for space in EXTERNAL_SPACES:
        f_train, f_test, f_noisy = (extract_features(x, space) for x in (x_train, x_test, noisy))
        assert fid_from_features(f_train, f_test) < 0.5 * fid_from_features(f_train, f_noisy)
    m = image_metrics(x_test[:150], reference=x_train[:400], feature_spaces=ALL_FEATURE_SPACES, k=5)
    assert set(m["by_features"]) == set(ALL_FEATURE_SPACES)
    for v in m["by_features"].values():
        assert set(v) == {"fid", "kid", "precision", "recall", "density", "coverage"}
        assert 0 < v["coverage"] <= 1 and v["density"] > 0
