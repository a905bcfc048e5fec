import json
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from fdistill.data import MovingDigits
from fdistill.eval import (
    VBenchUnavailable,
    centroid_speed,
    digit_crops,
    dynamic_degree,
    evaluate_video,
    flow_magnitude,
    frame_accuracy,
    run_vbench,
    subject_consistency,
    temporal_drift,
    temporal_flickering,
    write_mp4s,
)
from fdistill.eval.video import frame_features


@pytest.fixture(scope="module")
def moving() -> torch.Tensor:
    videos, _ = MovingDigits(num_videos=6, num_frames=12, seed=0, speed_range=(1.0, 1.5)).tensors()
    return videos


@pytest.fixture(scope="module")
def static(moving) -> torch.Tensor:
    return moving[:, :, :1].expand_as(moving).contiguous()


def test_static_video(static):
    assert torch.equal(temporal_flickering(static), torch.ones(len(static)))
    assert torch.allclose(subject_consistency(static), torch.ones(len(static)))
    assert torch.equal(dynamic_degree(static), torch.zeros(len(static)))
    assert flow_magnitude(static).max() < 0.2


def test_moving_video_is_dynamic(moving, static):
    mags = flow_magnitude(moving)
    assert mags.shape == (6, 11)
    assert mags.mean() > 0.7 and mags.mean() > 10 * flow_magnitude(static).mean()
    assert dynamic_degree(moving, magnitudes=mags).mean() == 1.0
    # a low frame rate raises VBench's threshold (x max(1, 8 / fps)) above this motion
    assert dynamic_degree(moving, fps=1.0, magnitudes=mags).mean() == 0.0
    assert (temporal_flickering(moving) < 1).all()
    assert (subject_consistency(moving) < 1).all()


def test_temporal_flickering_formula():
    video = torch.full((1, 1, 4, 8, 8), -1.0)
    video[:, :, 1::2] = 1.0  # black/white alternation: |difference| = 255 every step
    assert temporal_flickering(video).item() == pytest.approx(0.0)
    video = torch.full((2, 3, 3, 8, 8), -1.0)
    video[:, :, 1:] = -1.0 + 2 * 51 / 255  # one step of 51 grey levels, then none
    assert torch.allclose(temporal_flickering(video), torch.full((2,), 1 - 51 / 255 / 2))


def test_subject_consistency_matches_vbench_loop():
    z = torch.randn(3, 7, 16)
    got = subject_consistency(torch.empty(0), features=z)
    expected = []
    for video in F.normalize(z, dim=-1):
        sims = [
            (max(0.0, float(video[i] @ video[i - 1])) + max(0.0, float(video[i] @ video[0]))) / 2
            for i in range(1, len(video))
        ]
        expected.append(sum(sims) / len(sims))
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)
    same = z[:, :1].expand(-1, 5, -1)
    assert torch.allclose(subject_consistency(torch.empty(0), features=same), torch.ones(3))


def test_temporal_drift_detects_degrading_frames(moving):
    degraded = moving.clone()
    gen = torch.Generator().manual_seed(0)
    degraded[:, :, -3:] = torch.rand(degraded[:, :, -3:].shape, generator=gen) * 2 - 1
    real_frames = frame_features(MovingDigits(num_videos=16, num_frames=12, seed=1).tensors()[0])
    ref = real_frames.reshape(-1, real_frames.shape[-1])
    clean, drift = temporal_drift(moving, reference_features=ref), temporal_drift(degraded, reference_features=ref)
    assert drift["confidence_drift"] > clean["confidence_drift"] + 0.1
    assert drift["fid_drift"] > clean["fid_drift"]
    assert drift["frechet_first_last"] > clean["frechet_first_last"]


def test_evaluate_video_keys(moving):
    metrics = evaluate_video(moving[:2])
    assert {"temporal_flickering", "subject_consistency", "dynamic_degree", "flow_magnitude",
            "confidence_first", "confidence_last", "confidence_drift"} <= metrics.keys()
    assert all(isinstance(v, float) for v in metrics.values())
    with pytest.raises(ValueError):
        evaluate_video(moving[0])


def test_raft_flow_needs_a_local_file(tmp_path, moving):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        flow_magnitude(moving[:1], raft_weights=tmp_path / "raft.pth")
    from torchvision.models.optical_flow import raft_small

    torch.save(raft_small(weights=None).state_dict(), tmp_path / "raft.pth")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # RAFT on a shared 2-core machine is slower with more threads
    try:
        mags = flow_magnitude(moving[:1, :, :2], raft_weights=tmp_path / "raft.pth", raft_model="small")
    finally:
        torch.set_num_threads(threads)
    assert mags.shape == (1, 1) and torch.isfinite(mags).all()


def test_vbench_skips_cleanly_when_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("FDISTILL_VBENCH_PYTHON", raising=False)
    with pytest.warns(UserWarning, match="FDISTILL_VBENCH_PYTHON"):
        assert run_vbench(tmp_path) is None
    with pytest.raises(VBenchUnavailable, match="import vbench"):
        run_vbench(tmp_path, python=sys.executable, required=True)
    with pytest.raises(VBenchUnavailable, match="cannot run"):
        run_vbench(tmp_path, python=tmp_path / "no-python", required=True)


def test_vbench_adapter_protocol_with_a_stand_in_package(tmp_path, monkeypatch, moving):
    """A fake `vbench` with VBench's interface checks the subprocess round trip."""
    fake = tmp_path / "site" / "vbench"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(textwrap.dedent("""
        import json, os
        class VBench:
            def __init__(self, device, full_info_dir, output_path):
                self.output_path = output_path
            def evaluate(self, videos_path, name, prompt_list=[], dimension_list=None, local=False,
                         read_frame=False, mode="vbench_standard", **kwargs):
                assert mode == "custom_input"
                n = len([f for f in os.listdir(videos_path) if f.endswith(".mp4")])
                out = {d: [n + i / 10, []] for i, d in enumerate(dimension_list)}
                with open(os.path.join(self.output_path, name + "_eval_results.json"), "w") as f:
                    json.dump(out, f)
    """))
    monkeypatch.setenv("PYTHONPATH", str(fake.parent))
    monkeypatch.setenv("FDISTILL_VBENCH_PYTHON", sys.executable)
    paths = write_mp4s(moving[:2, :, :4], tmp_path / "videos", min_size=32)
    assert [p.name for p in paths] == ["video-00000.mp4", "video-00001.mp4"]
    scores = run_vbench(tmp_path / "videos", dimensions=["temporal_flickering", "dynamic_degree"],
                        output_dir=tmp_path / "out", device="cpu")
    assert scores == {"temporal_flickering": 2.0, "dynamic_degree": 2.1}
    assert json.loads((tmp_path / "out" / "fdistill_eval_results.json").read_text())


def test_write_mp4s_roundtrip(tmp_path, moving):
    cv2 = pytest.importorskip("cv2")
    (path,) = write_mp4s(moving[:1], tmp_path, min_size=64)
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 12 and frames[0].shape == (64, 64, 3)


def test_frame_accuracy_reads_moving_digits():
    data = MovingDigits(num_videos=20, num_frames=6, max_digits=1, seed=3, split="test")
    videos, labels = data.tensors()
    assert frame_accuracy(videos, labels) > 0.9  # the digit centred by its crop
    wrong = (labels + 1) % 10
    assert frame_accuracy(videos, wrong) < 0.2
    noise = torch.rand_like(videos) * 2 - 1
    assert frame_accuracy(noise, labels) < 0.4


def test_digit_crops_centre_the_glyph():
    frames = torch.full((2, 1, 16, 16), -1.0)
    frames[0, :, 1:4, 10:13] = 1.0  # a 3x3 blob near the top right
    frames[1, :, 12:15, 0:3] = 1.0  # near the bottom left
    crops = digit_crops(frames, glyph=8, size=8)
    assert crops.shape == (2, 1, 8, 8)
    assert torch.equal((crops > 0).sum((1, 2, 3)), torch.tensor([9, 9]))  # the whole blob inside each crop
    with pytest.raises(ValueError, match="glyph=20"):
        digit_crops(frames, glyph=20)
    with pytest.raises(ValueError, match="labels must be"):
        frame_accuracy(frames[:, :, None], torch.zeros(3, dtype=torch.long))


def test_centroid_speed_of_a_glyph_moving_one_pixel_a_frame(static):
    frames = torch.full((1, 1, 5, 16, 16), -1.0)
    for f in range(5):
        frames[0, 0, f, 4:7, 2 + f : 5 + f] = 1.0  # a 3x3 blob one column further each frame
    assert centroid_speed(frames) == pytest.approx(1.0)
    assert centroid_speed(static) == pytest.approx(0.0, abs=1e-6)
