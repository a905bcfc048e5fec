"""HiAR cell grid and HiARPipeline: orders against a cache-free oracle and each other, fused writes,
the noise bank, rolling windows, the pipeline's outputs / save-load / errors, and the video CLI."""

from __future__ import annotations

import argparse
import importlib.util

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from hiar_common import SCHEDULE, TINY, tiny_label_pipeline
from tolerances import assert_close_up_to_rounding

from fdistill.models import CacheForward, CausalWanTransformer3DModel
from fdistill.models.hiar_cell import (
    HiARCells,
    HiARPlan,
    NoiseBank,
    cell_waves,
    denoising_times,
    generate_video,
    run_cells,
)
from fdistill.pipelines.hiar_pipeline import HiARPipeline, HiARPipelineOutput, LabelEmbeddingModel
from fdistill.schedules import FlowMatchingSchedule
from fdistill.teachers import MOVING_DIGITS_TEACHER

TIMES = denoising_times(SCHEDULE, [1000, 750, 500, 250])
N, F, K = 4, 2, 4
BLOCK = (2, 2, F, 4, 4)  # (B, C, F, H, W)


def _video(model, text, order, num_blocks=N, seed=0, **plan):
    plan.setdefault("attention_backend", "sdpa")
    video, cells = generate_video(model, SCHEDULE, HiARPlan(TIMES, num_blocks, F, **plan), text,
                                  NoiseBank(seed, BLOCK), order)
    return video, cells


@torch.no_grad()
def _oracle(model, text, order, context="next", window=None, seed=0):
    """Cell by cell without KV caches: each cell's denoise is one full block-causal forward over the
    context blocks (at their level) followed by the block, so the cache logic is checked independently."""
    bank, n_steps = NoiseBank(seed, BLOCK), len(TIMES) - 1
    model_t = lambda t, frames: torch.full((BLOCK[0], frames), 1000.0 * t)
    levels = {0: [bank.initial(b) for b in range(N)]}  # levels[k][b] = x_b^k; level K = x̂0
    for k in range(n_steps):
        levels[k + 1] = [None] * N
    cells = cell_waves("sequential" if order == "sequential" else "hierarchical", N, n_steps)
    for [(k, b)] in cells:
        ctx_level = n_steps if order == "sequential" else (k + 1 if context == "next" else k)
        context_blocks = [levels[ctx_level][j] for j in range(b)]
        x = torch.cat([*context_blocks, levels[k][b]], dim=2)
        t = torch.cat([model_t(TIMES[ctx_level], F * b), model_t(TIMES[k], F)], dim=1)
        out = model(x, t, text, attention="block_causal", frames_per_block=F, window=window).sample[:, :, -F:]
        tk = torch.full((BLOCK[0],), TIMES[k])
        x0 = SCHEDULE.to_x0(out, levels[k][b], tk)
        levels[k + 1][b] = x0 if k + 1 == n_steps else SCHEDULE.add_noise(
            x0, bank.renoise(k, b), torch.full((BLOCK[0],), TIMES[k + 1]))
    return torch.cat(levels[n_steps], dim=2)


@pytest.mark.parametrize("order,context,window", [
    ("hierarchical", "next", None), ("hierarchical", "same", None), ("hierarchical", "next", 4),
    ("sequential", "next", None), ("sequential", "next", 4),
])
def test_orders_match_the_cache_free_oracle(model, text, order, context, window):
    video, _ = _video(model, text, order, context=context, window=window)
    torch.testing.assert_close(video, _oracle(model, text, order, context, window), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("context", ["next", "same"])
@pytest.mark.parametrize("window", [None, 4])
def test_hierarchical_and_wavefront_give_the_same_video(model, text, context, window):
    reference, _ = _video(model, text, "hierarchical", context=context, window=window)
    for order in ("hierarchical", "wavefront"):
        for fused in (True, False):
            video, _ = _video(model, text, order, context=context, window=window, fused=fused)
            assert (video - reference).abs().max() <= 1e-5, (order, fused)
    sequential, _ = _video(model, text, "sequential", window=window)
    assert (sequential - reference).abs().max() > 1e-3  # a clean context is a different video


def test_fused_write_saves_the_write_forwards(model, text):
    counts = {}
    for order in ("sequential", "hierarchical", "wavefront"):
        for fused in (True, False):
            counts[order, fused] = _video(model, text, order, fused=fused)[1].num_forwards
    assert counts["hierarchical", False] == N * K + K * (N - 1)  # denoise + write for every cell
    assert counts["hierarchical", True] == N * K  # writes ride on the next block's denoise
    assert counts["sequential", False] == N * K + (N - 1)  # one clean write per block
    assert counts["sequential", True] == N * K
    assert counts["wavefront", True] == N + K - 1  # one forward per slot
    assert counts["wavefront", False] == (N + K - 1) + (N + K - 2)  # plus a batched write per slot
    # context "same": the denoise forward writes its own level; no write forwards to fuse
    same = _video(model, text, "hierarchical", context="same", fused=False)[1]
    assert same.num_forwards == N * K and same.frames_processed == N * K * F
    # fusing moves the work of the writes, it does not remove it
    fused_cells = _video(model, text, "hierarchical")[1]
    assert fused_cells.frames_processed == (N * K + K * (N - 1)) * F


def test_forward_batched_equals_separate_forwards(model, text):
    g = torch.Generator().manual_seed(3)
    x = lambda frames: torch.randn(2, 2, frames, 4, 4, generator=g)
    causal = dict(attention="block_causal", frames_per_block=F, window=4)
    cache_a, cache_b = model.make_kv_cache(4), model.make_kv_cache(4)
    with torch.no_grad():
        for start in range(0, 6, F):  # cache_a: frames 0..5 (keeps 2..5); cache_b: empty
            model(x(F), torch.full((2,), 300.0), text, frame_offset=start, kv_cache=cache_a, update_cache=True, **causal)
    forwards = [  # a fused write + denoise at frame 6 on cache_a, a denoise at frame 0 writing itself on cache_b
        CacheForward(x(2 * F), torch.cat([torch.full((2, F), 250.0), torch.full((2, F), 750.0)], 1), 6, cache_a, F),
        CacheForward(x(F), torch.full((2, F), 1000.0), 0, cache_b, F),
    ]
    copies = [model.make_kv_cache(4), model.make_kv_cache(4)]
    for copy, cache in zip(copies, (cache_a, cache_b), strict=True):
        if len(cache):
            copy.update(cache.keys, cache.values, cache.frames)
    with torch.no_grad():
        expected = [model(fw.x, fw.t, text, frame_offset=fw.frame_offset, kv_cache=copy, update_cache=True,
                          cache_write_frames=fw.write_frames, **causal).sample
                    for fw, copy in zip(forwards, copies, strict=True)]
        got = model.forward_batched(forwards, text, frames_per_block=F, window=4, attention_backend="sdpa")
    for out, ref in zip(got, expected, strict=True):
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for cache, copy in zip((cache_a, cache_b), copies, strict=True):
        assert cache.frames.tolist() == copy.frames.tolist()
        torch.testing.assert_close(cache.keys[1], copy.keys[1], atol=1e-5, rtol=1e-5)


def test_noise_bank_is_seeded_per_cell():
    bank = NoiseBank(7, BLOCK)
    # exact: the same seeded generator draws
    torch.testing.assert_close(bank.renoise(2, 1), NoiseBank(7, BLOCK).renoise(2, 1), atol=0, rtol=0)
    draws = [bank.initial(0), bank.initial(1), bank.renoise(0, 0), bank.renoise(1, 0), NoiseBank(8, BLOCK).initial(0)]
    for i in range(len(draws)):
        for j in range(i):
            assert not torch.allclose(draws[i], draws[j])
    latents = torch.randn(2, 2, 3 * F, 4, 4)
    torch.testing.assert_close(NoiseBank(7, BLOCK, latents=latents).initial(1), latents[:, :, F : 2 * F])
    with pytest.raises(ValueError, match="seed"):
        NoiseBank(-1, BLOCK)


def test_ode_renoise_depends_only_on_the_initial_noise(model, text):
    latents = torch.randn(2, 2, N * F, 4, 4, generator=torch.Generator().manual_seed(5))
    plan = HiARPlan(TIMES, N, F, renoise="ode", attention_backend="sdpa")
    videos = [generate_video(model, SCHEDULE, plan, text, NoiseBank(seed, BLOCK, latents=latents))[0] for seed in (1, 2)]
    # exact: the same process, kernels and operands; only the unused bank seed differs
    torch.testing.assert_close(videos[0], videos[1], atol=0, rtol=0)
    noisy = generate_video(model, SCHEDULE, HiARPlan(TIMES, N, F, attention_backend="sdpa"), text,
                           NoiseBank(1, BLOCK, latents=latents))[0]
    assert not torch.allclose(noisy, videos[0], atol=1e-3)


@pytest.mark.parametrize("order,lengths", [("sequential", (4, 8)), ("wavefront", (8, 16))])
def test_rolling_window_keeps_memory_flat(model, text, order, lengths):
    """With a window, finished blocks streamed out and at most K blocks in flight, the state held
    between cells (caches, deferred writes, inputs) does not grow with the video length."""
    window, peaks = 4, []
    for blocks in lengths:  # both past the fill: K blocks in flight and full windows
        plan = HiARPlan(TIMES, blocks, F, window=window, attention_backend="sdpa")
        cells = HiARCells(model, SCHEDULE, plan, text, NoiseBank(0, BLOCK), clean_context=order == "sequential",
                          on_block=lambda b, x0: None)
        sizes = []

        def measure(cells=cells, sizes=sizes):
            sizes.append(cells.state_nbytes())
            assert all(cache.num_frames <= window for cache in cells._caches.values())

        with torch.no_grad():
            run_cells(cells, cell_waves(order, blocks, K), on_cell=measure)
        peaks.append(max(sizes))
    assert peaks[0] == peaks[1] > 0


def test_denoising_times_warp_the_step_list():
    assert denoising_times(FlowMatchingSchedule(shift=1.0), [1000, 750, 500, 250]) == (1.0, 0.75, 0.5, 0.25, 0.0)
    warped = denoising_times(FlowMatchingSchedule(shift=3.0), [1000, 500])
    assert warped[0] == 1.0 and warped[1] == pytest.approx(0.75) and warped[2] == 0.0
    assert len(denoising_times(SCHEDULE, 3)) == 4
    with pytest.raises(ValueError, match="decreasing"):
        denoising_times(SCHEDULE, [500, 750])


def test_plan_and_order_errors():
    with pytest.raises(ValueError, match="smaller than a block"):
        HiARPlan(TIMES, N, 4, window=2)
    with pytest.raises(ValueError, match="context"):
        HiARPlan(TIMES, N, F, context="clean")
    with pytest.raises(ValueError, match="renoise"):
        HiARPlan(TIMES, N, F, renoise="sde")
    with pytest.raises(ValueError, match="sequential, hierarchical, wavefront, pipelined"):
        cell_waves("frame_first", N, K)


# -- HiARPipeline ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe():
    return tiny_label_pipeline(num_frames=6)


def _seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_pipeline_outputs_and_orders(pipe):
    out = pipe(labels=[1, 2], generator=_seeded())
    assert isinstance(out, HiARPipelineOutput)
    assert out.frames.shape == (2, 6, 8, 8, 3) and 0 <= out.frames.min() and out.frames.max() <= 1
    pt = pipe(labels=[1, 2], generator=_seeded(), output_type="pt").frames
    assert pt.shape == (2, 6, 1, 8, 8)
    np.testing.assert_allclose(out.frames, pt.permute(0, 1, 3, 4, 2).repeat(1, 1, 1, 1, 3).numpy(), atol=1e-6)
    latent = pipe(labels=[1, 2], generator=_seeded(), output_type="latent").frames
    assert latent.shape == (2, 1, 6, 8, 8)
    assert len(pipe(labels=3, generator=_seeded(), output_type="pil").frames[0]) == 6
    wave = pipe(labels=[1, 2], generator=_seeded(), order="wavefront", output_type="latent").frames
    assert (wave - latent).abs().max() <= 1e-5
    seq = pipe(labels=[1, 2], generator=_seeded(), order="sequential", output_type="latent").frames
    assert (seq - latent).abs().max() > 1e-3
    again = pipe(labels=[1, 2], generator=_seeded(), output_type="latent", latents=None).frames
    torch.testing.assert_close(again, latent, atol=0, rtol=0)  # exact: the same call repeated
    other = pipe(labels=[1, 2], generator=_seeded(1), output_type="latent").frames
    assert not torch.allclose(other, latent)
    # given latents replace the bank's initial noise; K as an int; conditions by embedding
    noise = torch.randn(1, 1, 4, 8, 8)
    by_embeds = pipe(prompt_embeds=pipe.label_embedding(torch.tensor([4])), num_frames=4, latents=noise,
                     denoising_steps=2, generator=_seeded(), output_type="latent").frames
    by_label = pipe(labels=[4], num_frames=4, latents=noise, denoising_steps=2, generator=_seeded(),
                    output_type="latent").frames
    torch.testing.assert_close(by_embeds, by_label)


def test_pipeline_export_to_video(pipe, tmp_path, monkeypatch):
    from diffusers.utils import export_to_video, export_utils

    frames = pipe(labels=[1], generator=_seeded()).frames
    if importlib.util.find_spec("imageio_ffmpeg") is None:
        monkeypatch.setattr(export_utils, "is_imageio_available", lambda: False)  # diffusers' OpenCV writer
    path = export_to_video(frames[0], str(tmp_path / "video.mp4"), fps=4)
    assert (tmp_path / "video.mp4").stat().st_size > 0 and path.endswith(".mp4")


def test_pipeline_save_and_load_round_trip(pipe, tmp_path):
    from diffusers import DiffusionPipeline

    pipe.save_pretrained(tmp_path)
    assert type(DiffusionPipeline.from_pretrained(tmp_path)) is HiARPipeline  # diffusers' own loader
    loaded = HiARPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.transformer) is CausalWanTransformer3DModel
    assert isinstance(loaded.label_embedding, LabelEmbeddingModel)
    assert loaded.config.frames_per_block == 2 and list(loaded.config.denoising_steps) == [1000, 750, 500, 250]
    for order in ("hierarchical", "sequential"):
        a = pipe(labels=[5], generator=_seeded(), order=order).frames
        b = loaded(labels=[5], generator=_seeded(), order=order).frames
        assert_close_up_to_rounding(a, b)  # reloaded weights: other GEMM path (tests/tolerances.py)


def test_pipeline_errors(pipe):
    with pytest.raises(ValueError, match="valid orders: sequential, hierarchical, wavefront, pipelined"):
        pipe(labels=1, order="diagonal")
    with pytest.raises(ValueError, match="num_frames must be >= 1"):  # 5 frames: rounded (test_hiar_defaults.py)
        pipe(labels=1, num_frames=0)
    with pytest.raises(ValueError, match="smaller than a block"):
        pipe(labels=1, frames_per_block=2, window=1)
    with pytest.raises(ValueError, match="output_type"):
        pipe(labels=1, output_type="gif")
    with pytest.raises(ValueError, match="labels must be ints"):
        pipe(labels=11)
    with pytest.raises(ValueError, match="one of prompt, prompt_embeds, labels"):
        pipe(labels=1, prompt_embeds=torch.zeros(1, 1, 32))
    with pytest.raises(ValueError, match="tokenizer"):
        pipe(prompt="a moving three")
    with pytest.raises(ValueError, match="latents"):
        pipe(labels=1, latents=torch.zeros(1, 1, 4, 8, 8))


def test_pipeline_decodes_with_a_wan_vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=2, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True],
                           latents_mean=[0.0, 0.5], latents_std=[1.0, 2.0], scale_factor_spatial=2,
                           scale_factor_temporal=2).eval()
    pipe = HiARPipeline(CausalWanTransformer3DModel(**TINY).eval(), FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                        frames_per_block=1)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt_embeds=torch.randn(1, 3, 32), num_frames=5, height=16, width=16, denoising_steps=2,
                  generator=_seeded())
    latents = pipe(**kwargs, output_type="latent").frames
    assert latents.shape == (1, 2, 3, 8, 8)  # 5 frames -> 1 + (5 - 1) / 2 latent frames, 16 px -> 8
    frames = pipe(**kwargs).frames
    assert frames.shape == (1, 5, 16, 16, 3)
    # 3 latent frames, rounded up to 2 blocks of 2 (with a warning, as WanPipeline rounds num_frames)
    assert pipe(**kwargs, frames_per_block=2, output_type="latent").frames.shape[2] == 4


@pytest.mark.skipif(not MOVING_DIGITS_TEACHER.exists(), reason="moving-digits teacher asset not trained yet")
def test_moving_digits_teacher_runs_causally():
    from fdistill.pipelines.hiar_pipeline import hiar_pipeline_from_teacher

    pipe = hiar_pipeline_from_teacher(frames_per_block=2)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(labels=[3], num_frames=4, generator=_seeded(), output_type="pt").frames
    assert frames.shape[:2] == (1, 4) and torch.isfinite(frames).all()


# -- video CLI -----------------------------------------------------------------------------------
def _cli_args(parser_fn, argv):
    parser = argparse.ArgumentParser()
    parser_fn(parser)
    return parser.parse_args(argv)


def test_sample_and_eval_video_cli(pipe, tmp_path):
    from fdistill.video_cli import (
        add_eval_video_arguments,
        add_sample_video_arguments,
        eval_video_main,
        sample_video_main,
    )

    pipe.save_pretrained(tmp_path / "pipe")
    npy = tmp_path / "video.npy"
    sample_video_main(_cli_args(add_sample_video_arguments, [
        str(tmp_path / "pipe"), "--order", "wavefront", "--seed", "3", "--output", str(npy),
        "--label", "1", "--label", "7", "--num-frames", "4"]))
    frames = np.load(npy)
    assert frames.shape == (2, 4, 8, 8, 1)
    expected = pipe(labels=[1, 7], num_frames=4, generator=_seeded(3), output_type="pt").frames
    np.testing.assert_allclose(frames, expected.permute(0, 1, 3, 4, 2).numpy(), atol=1e-5)

    gif = tmp_path / "video.gif"
    sample_video_main(_cli_args(add_sample_video_arguments, [str(tmp_path / "pipe"), "--output", str(gif)]))
    assert gif.stat().st_size > 0
    if importlib.util.find_spec("imageio_ffmpeg") is None:
        with pytest.raises(ValueError, match="imageio-ffmpeg"):
            sample_video_main(_cli_args(add_sample_video_arguments,
                                        [str(tmp_path / "pipe"), "--output", str(tmp_path / "v.mp4")]))
    with pytest.raises(ValueError, match="--parallel runs the pipelined order"):
        sample_video_main(_cli_args(add_sample_video_arguments, [
            str(tmp_path / "pipe"), "--output", str(npy), "--order", "sequential", "--parallel", "2"]))

    report = eval_video_main(_cli_args(add_eval_video_arguments, [str(npy), "--output", str(tmp_path / "r.json")]))
    assert report["num_videos"] == 2 and report["num_frames"] == 4
    assert 0 <= report["temporal_flickering"] <= 1 and "subject_consistency" in report
    assert (tmp_path / "r.json").exists()
