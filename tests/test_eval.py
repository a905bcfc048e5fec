import warnings

import numpy as np
import pytest
import torch
from scipy import linalg
from tolerances import assert_close_up_to_rounding

from fdistill.data import load_digits_tensors
from fdistill.eval import (
    class_coverage,
    compute_fid,
    compute_kid,
    compute_precision_recall,
    extract_features,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_feature_extractor,
    kid_from_features,
    precision_recall,
)
from fdistill.eval.fid import INCEPTION_FILENAME, get_feature_extractor
from fdistill.models.classifier import DigitsClassifier, load_digits_classifier


def random_gaussian(rng: np.random.Generator, d: int) -> tuple[np.ndarray, np.ndarray]:
    a = rng.normal(size=(d, d))
    return rng.normal(size=d), a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_matches_references():
    rng = np.random.default_rng(0)
    (mu1, s1), (mu2, s2) = random_gaussian(rng, 8), random_gaussian(rng, 8)
    ours = frechet_distance(mu1, s1, mu2, s2)
    # independent: Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2), a symmetric PSD matrix
    r1 = linalg.sqrtm(s1).real
    eig = np.linalg.eigvalsh(r1 @ s2 @ r1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(eig.clip(0)).sum()
    assert ours == pytest.approx(expected, rel=1e-8)
    from cleanfid.fid import frechet_distance as cleanfid_frechet

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # clean-fid passes scipy's deprecated `disp`
        assert ours == pytest.approx(float(cleanfid_frechet(mu1, s1, mu2, s2)), rel=1e-8)


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    v1, v2 = rng.uniform(0.1, 3, size=5), rng.uniform(0.1, 3, size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)


def test_feature_statistics_and_identical_sets():
    x = np.random.default_rng(2).normal(size=(500, 6))
    mu, sigma = feature_statistics(torch.from_numpy(x))
    assert np.allclose(mu, x.mean(0)) and np.allclose(sigma, np.cov(x.T))
    assert abs(fid_from_features(x, x)) < 1e-8
    assert fid_from_features(x, x + 1.0) == pytest.approx(6.0, rel=1e-6)
    with pytest.raises(ValueError):
        feature_statistics(np.zeros((1, 3)))


def test_classifier_ships_and_is_accurate():
    model = load_digits_classifier()
    x, y = load_digits_tensors("test")
    with torch.no_grad():
        logits, feats = model(x), model.features(x)
    assert logits.shape == (297, 10) and feats.shape == (297, model.feature_dim)
    assert (logits.argmax(1) == y).float().mean() >= 0.97
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    with pytest.raises(FileNotFoundError, match="train_classifier"):
        load_digits_classifier("/nonexistent/classifier.safetensors")


def test_classifier_save_load_roundtrip(tmp_path):
    model = DigitsClassifier(width=8, feature_dim=16).eval()
    model.save(tmp_path / "c.safetensors")
    loaded = load_digits_classifier(tmp_path / "c.safetensors")
    x = torch.randn(3, 1, 16, 16)
    assert loaded.config == model.config
    assert_close_up_to_rounding(loaded(x), model(x))  # reloaded weights (tests/tolerances.py)


@pytest.fixture(scope="module")
def digit_features() -> dict[str, np.ndarray]:
    """Classifier features of real digits, two corruptions of the held-out split, and noise."""
    x_train, _ = load_digits_tensors("train")
    x_test, _ = load_digits_tensors("test")
    noise = torch.randn(x_test.shape, generator=torch.Generator().manual_seed(0))
    sets = {
        "train": x_train[:600],
        "test": x_test,
        "shifted": torch.roll(x_test, shifts=4, dims=-1),
        "noisy": (x_test + 0.5 * noise).clamp(-1, 1),
        "uniform": torch.rand(x_test.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1,
    }
    return {name: extract_features(x) for name, x in sets.items()}


def test_fid_and_kid_on_digits(digit_features):
    f = digit_features
    x_test, _ = load_digits_tensors("test")
    assert abs(compute_fid(x_test[:100], x_test[:100])) < 1e-6
    real = fid_from_features(f["train"], f["test"])
    assert 0 < real < fid_from_features(f["train"], f["shifted"])
    assert real < fid_from_features(f["train"], f["noisy"])
    kid_shift = kid_from_features(f["train"], f["shifted"], num_subsets=20)
    # KID is unbiased, so an identical pair scores ~0 up to subset noise, far below a real gap
    assert abs(kid_from_features(f["test"], f["test"], num_subsets=20)) < 0.2 * kid_shift
    assert compute_kid(x_test[:100], x_test[:100], num_subsets=5) == kid_from_features(
        f["test"][:100], f["test"][:100], num_subsets=5)


def test_kid_is_seeded_and_leaves_global_rng_alone():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(100, 8)), rng.normal(size=(100, 8)) + 0.3
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    k1 = kid_from_features(a, b, num_subsets=10, max_subset_size=50)
    assert np.random.rand() == expected_next
    assert k1 == kid_from_features(a, b, num_subsets=10, max_subset_size=50) and k1 > 0


def test_class_coverage():
    x, y = load_digits_tensors("test")
    cov = class_coverage(x, labels=y)
    assert cov["classes_covered"] == 10 and sum(cov["histogram"]) == len(y)
    assert cov["accuracy"] >= 0.97
    ones = x[y == 1]
    cov1 = class_coverage(ones)
    assert cov1["classes_covered"] <= 2 and cov1["histogram"][1] >= len(ones) - 1
    assert cov1["accuracy"] is None


def test_precision_recall_identical_disjoint_and_partial():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(300, 5))
    assert precision_recall(real, real) == {"precision": 1.0, "recall": 1.0}
    far = precision_recall(real, rng.normal(size=(300, 5)) + 100.0)
    assert far == {"precision": 0.0, "recall": 0.0}
    # fake covers one of two real modes: sharp but half the recall
    modes = np.concatenate([rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + 20])
    one_mode = rng.normal(size=(200, 2))
    pr = precision_recall(modes, one_mode, k=3)
    assert pr["precision"] > 0.9 and 0.4 < pr["recall"] < 0.55
    with pytest.raises(ValueError):
        precision_recall(real[:3], real[:3], k=3)


def test_precision_recall_on_images(digit_features):
    x_test, _ = load_digits_tensors("test")
    assert compute_precision_recall(x_test[:100], x_test[:100]) == {"precision": 1.0, "recall": 1.0}
    blank = torch.full_like(x_test[:20], -1.0)
    assert compute_precision_recall(x_test[:100], blank) == {"precision": 0.0, "recall": 0.0}
    pr_noise = precision_recall(digit_features["test"], digit_features["uniform"])
    assert pr_noise["precision"] < 0.5 and pr_noise["recall"] < 0.1
    pr_real = precision_recall(digit_features["test"], digit_features["train"])
    assert pr_real["precision"] > 0.8 and pr_real["recall"] > 0.6


def test_inception_requires_a_local_file(tmp_path, monkeypatch):
    missing = tmp_path / INCEPTION_FILENAME
    with pytest.raises(FileNotFoundError, match=str(missing)):
        inception_feature_extractor(missing)
    monkeypatch.setenv("FDISTILL_INCEPTION_WEIGHTS", str(missing))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        compute_fid(torch.zeros(2, 1, 16, 16), torch.zeros(2, 1, 16, 16), feature_extractor="inception")
    with pytest.raises(ValueError, match="unknown feature extractor"):
        get_feature_extractor("dino")


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_inception_path_uses_cleanfid_wrapper_and_resizer(tmp_path):
    """A stand-in TorchScript file with clean-fid's layout receives 3x299x299 inputs in [-1, 1]."""

    class Layers(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            stats = torch.stack([x.amin(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))], dim=1)
            size = torch.full((x.shape[0], 1), float(x.shape[1] * 1000 + x.shape[2]))
            return torch.cat([size, stats, torch.zeros(x.shape[0], 2045)], dim=1)

    class Base(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = Layers()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layers(x)

    torch.jit.script(Base()).save(str(tmp_path / INCEPTION_FILENAME))
    images = torch.linspace(-1, 1, 256).reshape(1, 1, 16, 16).repeat(2, 1, 1, 1)
    feats = extract_features(images, "inception", inception_weights=tmp_path)
    assert feats.shape == (2, 2048)
    assert feats[0, 0] == 3299  # 3 channels, 299 rows
    assert feats[0, 1] >= -1.0 and feats[0, 2] <= 127 / 128 and feats[0, 2] > 0.9
