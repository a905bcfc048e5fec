"""The attention sink: KV-cache bookkeeping, key re-rotation, and the sink in the HiAR orders and pipeline."""

from __future__ import annotations

import pytest
import torch
from hiar_common import SCHEDULE, TINY, tiny_label_pipeline

from fdistill.models import KVCache
from fdistill.models.hiar_cell import HiARPlan, NoiseBank, denoising_times, generate_video

TIMES = denoising_times(SCHEDULE, [1000, 750, 500, 250])
F = 2


def _write(cache: KVCache, first: int, count: int) -> None:
    """Frames first .. first + count − 1 whose keys hold their own frame index (values: 10 × it)."""
    frames = torch.arange(first, first + count)
    key = frames.float().view(1, 1, -1, 1)
    cache.update([key], [10 * key], frames)


def test_cache_keeps_the_sink_and_shows_it_before_the_window():
    shifts = []

    def rotate(keys, d):
        shifts.append(d)
        return keys + 1000 * d  # a stand-in rotation that records the shift in the key

    cache = KVCache(1, window=6, sink=2, rotate=rotate)
    for first in range(0, 20, 2):
        _write(cache, first, 2)
        origins, labels = cache.origins.tolist(), cache.frames.tolist()
        last = first + 1
        recent = [f for f in range(max(0, last - 3), last + 1) if f >= 2]
        assert origins == sorted({0, 1} | set(recent))  # the sink and the last window − sink frames
        if recent and recent[0] > 2:  # the window has left the sink behind: it sits just before the oldest kept frame
            assert labels == [recent[0] - 2, recent[0] - 1, *recent]
            # keys moved by the same shift as their labels; values never move
            assert cache.keys[0].flatten()[:2].tolist() == [0 + 1000 * (recent[0] - 2), 1 + 1000 * (recent[0] - 2)]
        else:
            assert labels == origins
        assert cache.values[0].flatten()[:2].tolist() == [0.0, 10.0]
    assert all(d > 0 for d in shifts) and sum(shifts) == 16 - 2  # oldest kept frame 16: sink at 14, 15


def test_cache_sink_errors():
    with pytest.raises(ValueError, match="sink must be 0 or a number of frames below the window"):
        KVCache(1, window=4, sink=4, rotate=lambda k, d: k)
    with pytest.raises(ValueError, match="below the window"):
        KVCache(1, window=None, sink=1, rotate=lambda k, d: k)
    with pytest.raises(ValueError, match="needs rotate"):
        KVCache(1, window=4, sink=1)
    with pytest.raises(ValueError, match="sink_frames=2 needs a window"):
        HiARPlan(TIMES, 4, F, window=4, sink_frames=2, fused=False)
    with pytest.raises(ValueError, match="runs unfused"):
        HiARPlan(TIMES, 4, F, window=8, sink_frames=2)


@torch.no_grad()
def test_rotated_keys_equal_keys_written_later(model):
    """RoPE composes: re-rotating cached keys by d frames gives the keys the same block writes d frames later."""
    g = torch.Generator().manual_seed(3)
    block = torch.randn(1, TINY["in_channels"], F, 4, 4, generator=g)
    text = torch.randn(1, 3, 32, generator=g)
    caches = []
    for offset in (0, 8):  # whole blocks: the block-causal mask inside the block is the same
        cache = model.make_kv_cache()
        model(block, torch.full((1,), 500.0), text, frame_offset=offset, kv_cache=cache, update_cache=True,
              attention="block_causal", frames_per_block=F)
        caches.append(cache)
    for early, late in zip(caches[0].keys, caches[1].keys, strict=True):
        torch.testing.assert_close(model.rotate_keys(early, 8), late, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(early, late, atol=1e-3)  # the temporal RoPE does move them


def _video(model, text, order, num_blocks, **plan):
    plan.setdefault("attention_backend", "sdpa")
    video, _ = generate_video(model, SCHEDULE, HiARPlan(TIMES, num_blocks, F, **plan), text,
                              NoiseBank(0, (2, 2, F, 4, 4)), order)
    return video


@torch.no_grad()
def test_sink_in_every_step_first_order(model, text):
    window, sink, blocks = 6, 2, 6
    plain = _video(model, text, "hierarchical", blocks, window=window, fused=False)
    ref = _video(model, text, "hierarchical", blocks, window=window, sink_frames=sink, fused=False)
    wave = _video(model, text, "wavefront", blocks, window=window, sink_frames=sink, fused=False)
    assert (wave - ref).abs().max() <= 1e-5
    # Until the window moves past frame `sink` the sink changes nothing; after it, it does.
    first = window - F  # blocks up to here see every earlier frame in both runs
    torch.testing.assert_close(ref[:, :, :first + F], plain[:, :, :first + F], atol=1e-5, rtol=1e-5)
    assert (ref[:, :, -F:] - plain[:, :, -F:]).abs().max() > 1e-3


@torch.no_grad()
def test_pipeline_sink_default_and_override():
    pipe = tiny_label_pipeline(12)
    pipe.register_to_config(window=6)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = pipe(labels=[1, 2], num_frames=12, generator=g(), output_type="latent").frames
    sunk = pipe(labels=[1, 2], num_frames=12, sink_frames=1, generator=g(), output_type="latent").frames
    assert (sunk - plain).abs().max() > 1e-4
    pipelined = pipe(labels=[1, 2], num_frames=12, sink_frames=1, order="pipelined", generator=g(),
                     output_type="latent").frames
    torch.testing.assert_close(pipelined, sunk, atol=1e-5, rtol=1e-5)  # every process's caches hold the sink
    pipe.register_to_config(sink_frames=1)  # a saved default, overridden by the call
    torch.testing.assert_close(pipe(labels=[1, 2], num_frames=12, generator=g(), output_type="latent").frames, sunk)
    torch.testing.assert_close(pipe(labels=[1, 2], num_frames=12, sink_frames=0, generator=g(),
                                    output_type="latent").frames, plain)
    # a video inside the window never moves it: the sink is a no-op there
    short = pipe(labels=[1, 2], num_frames=6, generator=g(), output_type="latent").frames
    torch.testing.assert_close(short, pipe(labels=[1, 2], num_frames=6, sink_frames=0, generator=g(),
                                           output_type="latent").frames)
    with pytest.raises(ValueError, match="sink_frames=4 needs a window"):
        pipe(labels=[1], num_frames=12, sink_frames=4, output_type="latent")


def test_student_defaults_change_in_place(tmp_path):
    from fdistill.pipelines.hiar_student import HIAR_STUDENT, load_hiar_student, set_student_defaults

    path = tmp_path / "student.safetensors"
    path.write_bytes(HIAR_STUDENT.read_bytes())
    before = load_hiar_student(path).config
    meta = set_student_defaults(path, "a test", window=10, sink_frames=2)
    assert meta["defaults_history"][-1] == {"from": {"window": before.window, "sink_frames": before.sink_frames},
                                             "to": {"window": 10, "sink_frames": 2}, "reason": "a test"}
    pipe = load_hiar_student(path)
    assert (pipe.config.window, pipe.config.sink_frames) == (10, 2)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="sink_frames=9 needs a window"):
        set_student_defaults(path, "bad", sink_frames=9)
    with pytest.raises(ValueError, match="not an inference default: height"):
        set_student_defaults(path, "bad", height=3)
    assert path.read_bytes() == before  # a refused change leaves the file alone


def test_sample_video_cli_takes_the_sink(tmp_path):
    import argparse

    import numpy as np

    from fdistill.video_cli import add_sample_video_arguments, sample_video_main

    pipe = tiny_label_pipeline(12)
    pipe.save_pretrained(tmp_path / "pipe")
    parser = argparse.ArgumentParser()
    add_sample_video_arguments(parser)
    npy = tmp_path / "v.npy"
    sample_video_main(parser.parse_args([str(tmp_path / "pipe"), "--label", "4", "--window", "6", "--sink-frames", "2",
                                         "--seed", "1", "--output", str(npy)]))
    expected = pipe(labels=[4], window=6, sink_frames=2, generator=torch.Generator().manual_seed(1),
                    output_type="pt").frames
    np.testing.assert_allclose(np.load(npy), expected.permute(0, 1, 3, 4, 2).numpy(), atol=1e-5)
