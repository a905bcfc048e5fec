"""Saved defaults (HiARPipeline, FDistillPipeline), the README's video quick start, num_frames rounding,
num_inference_steps and classifier-free guidance in the HiAR pipeline."""

from __future__ import annotations

import logging

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel
from hiar_common import TINY
from tolerances import assert_close_up_to_rounding

from fdistill.models import CausalWanTransformer3DModel
from fdistill.pipelines import FDistillPipeline, HiARPipeline, LabelEmbeddingModel
from fdistill.schedules import EDMSchedule, scheduler_for
from fdistill.teachers import MOVING_DIGITS_TEACHER

DEFAULTS = dict(num_frames=6, height=8, width=8, frames_per_block=2, denoising_steps=[1000, 600, 300], window=4,
                order="wavefront", guidance_scale=2.5, context="same", renoise="ode")


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def latents(pipe, **kwargs):
    """The pipeline's latent video, with a freshly seeded generator per call."""
    return pipe(generator=seeded(), output_type="latent", **kwargs).frames


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_hiar(**config) -> HiARPipeline:
    torch.manual_seed(0)
    transformer = CausalWanTransformer3DModel(**{**TINY, "in_channels": 1, "out_channels": 1}).eval()
    return quiet(HiARPipeline(transformer, FlowMatchEulerDiscreteScheduler(shift=2.0),
                              label_embedding=LabelEmbeddingModel(10, 32, 1), **config))


@pytest.fixture(scope="module")
def pipe() -> HiARPipeline:
    return tiny_hiar(num_frames=6, height=8, width=8, frames_per_block=2, denoising_steps=[1000, 500])


# -- saved defaults -----------------------------------------------------------------------------
def test_saved_defaults_are_the_call_defaults(tmp_path):
    built = tiny_hiar(**DEFAULTS)
    built.save_pretrained(tmp_path)
    loaded = quiet(HiARPipeline.from_pretrained(tmp_path))
    assert {k: loaded.config[k] for k in DEFAULTS} == DEFAULTS
    by_default = loaded(labels=[3], generator=seeded(), output_type="latent").frames
    explicit = built(labels=[3], generator=seeded(), output_type="latent", **DEFAULTS).frames
    assert by_default.shape == (1, 1, 6, 8, 8)
    assert_close_up_to_rounding(by_default, explicit)  # reloaded weights (tests/tolerances.py)
    # each saved default matters, and a call argument overrides it
    for override in (dict(guidance_scale=1.0), dict(window=6), dict(order="sequential"), dict(context="next"),
                     dict(renoise="noise"), dict(denoising_steps=[1000, 500])):
        other = loaded(labels=[3], generator=seeded(), output_type="latent", **override).frames
        assert (other - by_default).abs().max() > 1e-4, override
    assert loaded(labels=[3], generator=seeded(), output_type="latent", num_frames=2).frames.shape[2] == 2


def test_missing_defaults_are_named():
    bare = tiny_hiar(height=8, width=8)
    with pytest.raises(ValueError, match=r"^pass num_frames \(the pipeline config sets no default\)$"):
        bare(labels=[3])
    with pytest.raises(ValueError, match=r"^pass num_frames, height and width \(the pipeline config sets no default\)$"):
        tiny_hiar()(labels=[3])
    with pytest.raises(ValueError, match=r"^pass height and width "):
        tiny_hiar(num_frames=2)(labels=[3])
    with pytest.raises(ValueError, match="unknown order 'diagonal'"):
        tiny_hiar(order="diagonal")


@pytest.mark.skipif(not MOVING_DIGITS_TEACHER.exists(), reason="moving-digits teacher asset not trained yet")
def test_readme_video_quick_start_reproduces_itself(tmp_path, monkeypatch):
    """README "Video: HiAR schedules": the snippet builds from the teacher and saves; its first `sample-video` line,
    with no size flags, writes the snippet's video (the same label, seed and saved settings)."""
    import shlex
    from pathlib import Path

    import numpy as np
    from readme_commands import readme_commands

    from fdistill.cli import main

    commands = readme_commands(Path(__file__).resolve().parents[1] / "README.md")
    snippet = next(c.text for c in commands if c.kind == "python" and "hiar_pipeline_from_teacher(" in c.text)
    line = next(c.text for c in commands if c.text.startswith("fdistill sample-video outputs/hiar "))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(snippet, scope)
    saved = HiARPipeline.from_pretrained("outputs/hiar").config
    assert (saved.num_frames, saved.height, saved.width, saved.window) == (12, 16, 16, 8)  # the teacher's clips
    words = shlex.split(line)[1:]
    words[words.index("--output") + 1] = "video.npy"
    assert main(words) == 0
    video = np.load("video.npy")  # (1, 12, 16, 16, 1), the model's one channel
    np.testing.assert_allclose(video.repeat(3, axis=-1), scope["out"].frames, atol=1e-5)


def test_sample_video_help_says_the_default_label(capsys):
    from fdistill.cli import main

    with pytest.raises(SystemExit):
        main(["sample-video", "--help"])
    assert "Default: the null label, an unconditional video" in " ".join(capsys.readouterr().out.split())


def test_frames_per_block_zero_is_refused_not_replaced(pipe):
    with pytest.raises(ValueError, match=r"^frames_per_block must be >= 1, got 0$"):
        pipe(labels=[3], frames_per_block=0)
    with pytest.raises(ValueError, match=r"^frames_per_block must be >= 1, got 0$"):
        tiny_hiar(frames_per_block=0)


# -- num_frames rounding, num_inference_steps -----------------------------------------------------
def test_num_frames_round_up_to_whole_blocks_with_a_warning(pipe, caplog):
    with caplog.at_level(logging.WARNING):
        frames = pipe(labels=[3], num_frames=5, generator=seeded(), output_type="pt").frames
    assert frames.shape[1] == 6
    assert "num_frames=5 (5 latent frames) is not a whole number of blocks of frames_per_block=2: rounded up to 6" \
        in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        pipe(labels=[3], num_frames=4, generator=seeded(), output_type="latent")
    assert caplog.text == ""


def test_num_frames_round_to_the_wan_vae_grid_as_wan_pipeline(caplog):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=2, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True],
                           latents_mean=[0.0, 0.5], latents_std=[1.0, 2.0], scale_factor_spatial=2,
                           scale_factor_temporal=2).eval()
    pipe = quiet(HiARPipeline(CausalWanTransformer3DModel(**TINY).eval(), FlowMatchEulerDiscreteScheduler(shift=3.0),
                              vae=vae, frames_per_block=1))
    kwargs = dict(prompt_embeds=torch.randn(1, 3, 32), height=16, width=16, denoising_steps=1, generator=seeded())
    with caplog.at_level(logging.WARNING):
        out = pipe(**kwargs, num_frames=4, output_type="latent").frames
    assert out.shape[2] == 3  # 4 frames -> 4 // 2 · 2 + 1 = 5 -> 3 latent frames, as WanPipeline rounds
    assert "num_frames=4 rounded to 5, as WanPipeline does" in caplog.text


def test_num_inference_steps_is_k(pipe):
    by_count = pipe(labels=[3], num_inference_steps=3, generator=seeded(), output_type="latent").frames
    by_int = pipe(labels=[3], denoising_steps=3, generator=seeded(), output_type="latent").frames
    torch.testing.assert_close(by_count, by_int, atol=0, rtol=0)  # exact: the same grid, the same process
    default = pipe(labels=[3], generator=seeded(), output_type="latent").frames
    assert (by_count - default).abs().max() > 1e-4
    with pytest.raises(ValueError, match="num_inference_steps .* or denoising_steps .*, not both"):
        pipe(labels=[3], num_inference_steps=3, denoising_steps=[1000, 500])


# -- classifier-free guidance --------------------------------------------------------------------
@pytest.mark.parametrize("order", ["hierarchical", "wavefront", "sequential"])
def test_guidance_zero_is_the_unconditional_model(pipe, order):
    """w = 0 keeps only the null-label branch, which runs batched with the conditional one and keeps
    its own KV caches: it must equal the plain null-label video."""
    unconditional = latents(pipe, labels=[3, 7], guidance_scale=0.0, order=order)
    assert_close_up_to_rounding(unconditional, latents(pipe, labels=[10, 10], order=order))
    assert (latents(pipe, labels=[3, 7], guidance_scale=3.0, order=order) - unconditional).abs().max() > 1e-3


def test_guidance_extrapolates_from_the_null_label(pipe):
    """One block, one step: x̂0 is affine in the model output, so x̂0(w) = x̂0(0) + w (x̂0(1) − x̂0(0))."""
    x0 = {w: latents(pipe, labels=[3], num_frames=2, denoising_steps=[1000], guidance_scale=w) for w in (0.0, 1.0, 2.5)}
    assert_close_up_to_rounding(x0[2.5], x0[0.0] + 2.5 * (x0[1.0] - x0[0.0]))


def test_guided_orders_agree(pipe):
    kwargs = dict(labels=[3, 7], guidance_scale=2.0)
    assert_close_up_to_rounding(latents(pipe, order="wavefront", **kwargs), latents(pipe, order="hierarchical", **kwargs))


def test_guidance_with_embeddings_uses_the_null_label_or_the_negative_embeddings(pipe):
    cond = pipe.label_embedding(torch.tensor([3]))
    null = pipe.label_embedding(torch.tensor([10]))
    by_label = latents(pipe, labels=[3], guidance_scale=2.0)
    assert_close_up_to_rounding(latents(pipe, prompt_embeds=cond, guidance_scale=2.0), by_label)
    assert_close_up_to_rounding(latents(pipe, prompt_embeds=cond, negative_prompt_embeds=null, guidance_scale=2.0),
                                by_label)
    with pytest.raises(ValueError, match="negative_prompt_embeds .* must match prompt_embeds"):
        pipe(prompt_embeds=cond, negative_prompt_embeds=torch.zeros(1, 2, 32), guidance_scale=2.0)


# -- FDistillPipeline ------------------------------------------------------------------------------
def test_fdistill_pipeline_saves_its_resolution(tmp_path):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    FDistillPipeline(unet=unet, scheduler=scheduler_for(EDMSchedule()), student_t=2.5, height=16,
                     width=24).save_pretrained(tmp_path)
    loaded = quiet(FDistillPipeline.from_pretrained(tmp_path))
    assert (loaded.config.height, loaded.config.width, loaded.config.student_t) == (16, 24, 2.5)
    images = loaded(output_type="pt", generator=seeded()).images  # no arguments: the saved defaults
    assert images.shape == (1, 1, 16, 24)
    explicit = loaded(output_type="pt", generator=seeded(), height=16, width=24, timesteps=[2.5]).images
    torch.testing.assert_close(images, explicit, atol=0, rtol=0)  # exact: the same call spelled out
    assert loaded(output_type="pt", height=8, width=8).images.shape == (1, 1, 8, 8)


def test_eval_video_samples_a_pipeline_folder_with_its_defaults(pipe, tmp_path):
    import json

    from fdistill.cli import main

    pipe.save_pretrained(tmp_path / "pipe")
    main(["eval-video", str(tmp_path / "pipe"), "--num-videos", "2", "--output", str(tmp_path / "r.json")])
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["num_videos"], report["num_frames"]) == (2, 6) and 0 <= report["temporal_flickering"] <= 1
