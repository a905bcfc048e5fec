import numpy as np
import pytest
import torch

from fdistill.data import DigitsDataset, MovingDigits, load_digits_tensors
from fdistill.data import digits as digits_module
from fdistill.data.digits import load_digits_8x8
from fdistill.data.moving_digits import bounce_trajectory


def test_digits_shapes_range_and_split_sizes():
    sizes = {}
    for split in ("train", "test", "all"):
        x, y = load_digits_tensors(split)
        assert x.shape == (len(y), 1, 16, 16) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
        assert x.min() == -1.0 and x.max() == 1.0
        sizes[split] = len(y)
    assert sizes == {"train": 1500, "test": 297, "all": 1797}


def test_digits_split_is_stratified_disjoint_and_deterministic():
    idx = digits_module._split_indices()
    assert set(idx["train"]).isdisjoint(idx["test"])
    assert sorted([*idx["train"], *idx["test"]]) == list(range(1797))
    counts = torch.bincount(load_digits_tensors("test")[1], minlength=10)
    assert counts.min() >= 29 and counts.max() <= 30
    digits_module._split_indices.cache_clear()
    again = digits_module._split_indices()
    assert all((again[k] == idx[k]).all() for k in idx)


def test_digits_upsampling_is_bilinear_of_the_8x8_glyphs():
    x16, _ = load_digits_tensors("test")
    x8, _ = load_digits_8x8("test")
    # 2x bilinear (align_corners=False) as a matrix: each output row mixes 3/4 of the nearest
    # input row with 1/4 of the next nearest, clamped at the border
    up = torch.zeros(16, 8)
    for i in range(8):
        up[2 * i, i] += 0.75
        up[2 * i, max(i - 1, 0)] += 0.25
        up[2 * i + 1, i] += 0.75
        up[2 * i + 1, min(i + 1, 7)] += 0.25
    assert torch.allclose((x16[:, 0] + 1) / 2, up @ x8 @ up.T, atol=1e-5)


def test_digits_dataset_and_bad_split():
    ds = DigitsDataset("test")
    image, label = ds[0]
    assert len(ds) == 297 and image.shape == (1, 16, 16) and label.dtype == torch.int64
    with pytest.raises(ValueError, match="unknown digits split 'val'"):
        load_digits_tensors("val")


def test_moving_digits_shapes_and_determinism():
    a = MovingDigits(num_videos=6, num_frames=10, seed=7)
    b = MovingDigits(num_videos=6, num_frames=10, seed=7)
    video, label = a[3]
    assert video.shape == (1, 10, 16, 16) and video.dtype == torch.float32
    assert video.min() >= -1.0 and video.max() <= 1.0 and label.dtype == torch.int64
    assert torch.equal(a[3][0], b[3][0]) and a[3][1] == b[3][1]
    # sample i does not depend on which samples were drawn before it
    _ = [b[i] for i in (5, 0, 2)]
    assert torch.equal(a.sample(3).video, b.sample(3).video)
    assert not torch.equal(a[3][0], MovingDigits(6, 10, seed=8)[3][0])
    videos, labels = a.tensors()
    assert videos.shape == (6, 1, 10, 16, 16) and labels.shape == (6,)
    counts = {len(a.sample(i).labels) for i in range(6)}
    assert counts <= {1, 2}
    assert a.sample(0).labels[0] == a[0][1]


def test_moving_digits_bounce_stays_in_canvas():
    ds = MovingDigits(num_videos=8, num_frames=80, size=24, max_digits=1, seed=0,
                      glyph_size=10, speed_range=(1.0, 2.5))
    limit = 24 - 10
    for i in range(len(ds)):
        s = ds.sample(i)
        assert s.video.shape == (1, 80, 24, 24)
        assert (s.positions >= 0).all() and (s.positions <= limit).all()
        # every velocity component flips sign at some wall over 80 frames
        assert (s.velocities[1:] * s.velocities[:-1] < 0).any(dim=0).all()
        # the glyph is never cropped: each frame holds the whole glyph's ink
        ink = ((s.video[0] + 1) / 2).sum(dim=(1, 2))
        assert torch.allclose(ink, ink[0].expand_as(ink), rtol=1e-5)


def test_bounce_trajectory_reflects():
    pos, vel = bounce_trajectory(np.array([0.5, 3.0]), np.array([-1.0, 0.0]), 4, 8.0)
    assert pos[:, 0].tolist() == [0.5, 0.5, 1.5, 2.5]
    assert vel[:, 0].tolist() == [-1.0, 1.0, 1.0, 1.0]
    assert (pos[:, 1] == 3.0).all()


def test_moving_digits_static_and_validation():
    video, _ = MovingDigits(2, 6, speed_range=(0.0, 0.0))[1]
    assert torch.equal(video, video[:, :1].expand_as(video))
    with pytest.raises(ValueError):
        MovingDigits(2, 6, size=16, glyph_size=16)
    with pytest.raises(ValueError):
        MovingDigits(2, 6, max_digits=0)
    with pytest.raises(ValueError):
        MovingDigits(2, 6, speed_range=(1.0, 20.0))
