"""Continuation: a given clip written into every KV cache as context, then the blocks after it."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from hiar_common import SCHEDULE, tiny_label_pipeline

from fdistill.models.hiar_cell import HiARPlan, NoiseBank, cell_waves, denoising_times, generate_video
from fdistill.pipelines.hiar_parallel import generate_video_pipelined

TIMES = denoising_times(SCHEDULE, [1000, 750, 500, 250])
N, F, K = 3, 2, 4
BLOCK = (2, 2, F, 4, 4)


def _prefix(frames: int) -> torch.Tensor:
    return torch.randn(2, 2, frames, 4, 4, generator=torch.Generator().manual_seed(7)).clamp(-1, 1)


def _continue(model, text, order, prefix, **plan):
    plan.setdefault("attention_backend", "sdpa")
    video, cells = generate_video(model, SCHEDULE, HiARPlan(TIMES, N, F, **plan), text, NoiseBank(0, BLOCK), order,
                                  prefix=prefix)
    return video, cells


@torch.no_grad()
def _oracle(model, text, order, prefix, context="next", window=None):
    """Cell by cell without caches: each denoise is one block-causal forward over the prefix at the level
    the cell reads, the earlier blocks at that level and the block, starting at frame S − P."""
    bank, p = NoiseBank(0, BLOCK), prefix.shape[2]
    start = -(-p // F) * F
    model_t = lambda t, frames: torch.full((BLOCK[0], frames), 1000.0 * t)
    levels = {0: [bank.initial(b) for b in range(N)]}
    for k in range(K):
        levels[k + 1] = [None] * N
    for [(k, b)] in cell_waves("sequential" if order == "sequential" else "hierarchical", N, K):
        level = K if order == "sequential" else (k + 1 if context == "next" else k)
        given = prefix
        if TIMES[level] > 0:
            given = SCHEDULE.add_noise(prefix, bank.prefix(k, p), torch.full((BLOCK[0],), TIMES[level]))
        x = torch.cat([given, *[levels[level][j] for j in range(b)], levels[k][b]], dim=2)
        t = torch.cat([model_t(TIMES[level], p + F * b), model_t(TIMES[k], F)], dim=1)
        out = model(x, t, text, attention="block_causal", frames_per_block=F, window=window,
                    frame_offset=start - p).sample[:, :, -F:]
        x0 = SCHEDULE.to_x0(out, levels[k][b], torch.full((BLOCK[0],), TIMES[k]))
        levels[k + 1][b] = x0 if k + 1 == K else SCHEDULE.add_noise(
            x0, bank.renoise(k, b), torch.full((BLOCK[0],), TIMES[k + 1]))
    return torch.cat(levels[K], dim=2)


@pytest.mark.parametrize("order,context,window,frames", [
    ("hierarchical", "next", None, 3), ("hierarchical", "same", None, 4), ("hierarchical", "next", 4, 5),
    ("sequential", "next", None, 1), ("sequential", "next", 4, 3),
])
def test_continuation_matches_the_cache_free_oracle(model, text, order, context, window, frames):
    prefix = _prefix(frames)
    video, _ = _continue(model, text, order, prefix, context=context, window=window)
    torch.testing.assert_close(video, _oracle(model, text, order, prefix, context, window), atol=1e-4, rtol=1e-4)
    plain, _ = _continue(model, text, order, None, context=context, window=window)
    assert (plain - video).abs().max() > 1e-3  # the prefix is read


@pytest.mark.parametrize("context", ["next", "same"])
def test_every_step_first_order_continues_alike(model, text, context):
    prefix = _prefix(3)
    reference, _ = _continue(model, text, "hierarchical", prefix, context=context)
    for order, fused in (("hierarchical", False), ("wavefront", True), ("wavefront", False)):
        video, _ = _continue(model, text, order, prefix, context=context, fused=fused)
        assert (video - reference).abs().max() <= 1e-5, (order, fused)
    plan = HiARPlan(TIMES, N, F, context=context, attention_backend="sdpa")
    piped = generate_video_pipelined(model, SCHEDULE, plan, text, NoiseBank(0, BLOCK), 2, threads_per_process=1,
                                     prefix=prefix[:1])
    one, _ = _continue(model, text, "hierarchical", prefix[:1], context=context)
    assert (piped - one).abs().max() <= 1e-5


def test_a_clean_prefix_continues_a_sequential_video_exactly(model, text):
    """Sequential with ODE steps: continuing a video's first blocks (its own clean outputs) with the same
    noise for the rest gives the rest of that video."""
    noise = torch.randn(2, 2, N * F, 4, 4, generator=torch.Generator().manual_seed(3))
    plan = HiARPlan(TIMES, N, F, renoise="ode", attention_backend="sdpa")
    full, _ = generate_video(model, SCHEDULE, plan, text, NoiseBank(0, BLOCK, latents=noise), "sequential")
    rest_plan = HiARPlan(TIMES, N - 1, F, renoise="ode", attention_backend="sdpa")
    rest, _ = generate_video(model, SCHEDULE, rest_plan, text, NoiseBank(5, BLOCK, latents=noise[:, :, F:]),
                             "sequential", prefix=full[:, :, :F])
    torch.testing.assert_close(rest, full[:, :, F:], atol=1e-4, rtol=1e-4)


# -- the pipeline ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe():
    return tiny_label_pipeline(num_frames=4)


def _clip(frames=3, size=8, channels=1):
    return torch.rand(frames, channels, size, size, generator=torch.Generator().manual_seed(2))


def test_pipeline_continues_a_clip_in_every_order(pipe):
    clip = _clip()
    z = pipe.encode_video(pipe._video_frames(clip), 8, 8, torch.device("cpu"))
    torch.testing.assert_close(z, clip.transpose(0, 1)[None] * 2 - 1)  # no VAE: the frames are the latents
    kwargs = dict(labels=[1, 2], video=clip, generator=torch.Generator().manual_seed(0), output_type="latent")
    out = pipe(**kwargs).frames
    assert out.shape == (2, 1, 4, 8, 8)  # num_frames new frames, not the clip
    for order in ("wavefront", "pipelined"):
        if order == "pipelined":
            kwargs["labels"] = [1]
        got = pipe(**{**kwargs, "generator": torch.Generator().manual_seed(0)}, order=order, num_processes=2).frames
        ref = out if order != "pipelined" else pipe(**{**kwargs, "generator": torch.Generator().manual_seed(0)}).frames
        assert (got - ref).abs().max() <= 1e-5, order
    plain = pipe(labels=[1, 2], generator=torch.Generator().manual_seed(0), output_type="latent").frames
    assert (plain - out).abs().max() > 1e-3
    seq = pipe(labels=[1, 2], video=clip, order="sequential", output_type="pt",
               generator=torch.Generator().manual_seed(0)).frames
    assert seq.shape == (2, 4, 1, 8, 8)


def test_pipeline_continues_an_image_and_a_batch_and_resizes(pipe):
    grey = PIL.Image.fromarray((np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8))
    one = pipe(labels=[3], video=grey, output_type="latent", generator=torch.Generator().manual_seed(0)).frames
    also = pipe(labels=[3], video=[grey.convert("RGB")], output_type="latent",
                generator=torch.Generator().manual_seed(0)).frames
    torch.testing.assert_close(one, also)  # an image is a one-frame clip, grey from RGB
    rgb = _clip(2, size=16, channels=3)  # resized to the pipeline's 8 x 8, averaged to its one channel
    assert pipe(labels=[3], video=rgb, output_type="pt").frames.shape == (1, 4, 1, 8, 8)
    # one clip per video: the cells see each video's own prefix
    two = torch.stack([_clip(), 1 - _clip()])
    both = pipe(labels=[3, 3], video=two, output_type="latent", generator=torch.Generator().manual_seed(0)).frames
    assert (both[0] - both[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="2 clips for 3 videos"):
        pipe(labels=[3, 3, 3], video=two)
    # guided: both branches read the clip
    assert pipe(labels=[3], video=rgb, guidance_scale=2.0, output_type="pt").frames.shape == (1, 4, 1, 8, 8)


@pytest.mark.parametrize("video,match", [
    (torch.rand(3, 2, 8, 8), "C = 1 or 3"),
    (torch.rand(8, 8), "one clip"),
    (torch.rand(3, 1, 8, 8) * 2, r"\[0, 1\]"),
    (torch.full((3, 1, 8, 8), float("nan")), r"\[0, 1\]"),
    ("clip.mp4", "PIL"),
])
def test_pipeline_refuses_a_bad_clip(pipe, video, match):
    with pytest.raises(ValueError, match=match):
        pipe(labels=[1], video=video)
