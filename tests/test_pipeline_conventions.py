"""diffusers' pipeline conventions: its common pipeline test of encode_prompt in isolation (on HiARPipeline,
and on FDistillPipeline, which has no prompt), HiAR's check_inputs / prepare_latents / callback_on_step_end /
num_videos_per_prompt, and the video metrics reading what the HiAR pipeline returns."""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel
from diffusers.utils.source_code_parsing_utils import ReturnNameVisitor
from hiar_common import TINY
from tolerances import assert_close_up_to_rounding

from fdistill.eval import video as metrics
from fdistill.models import CausalWanTransformer3DModel
from fdistill.models.hiar_cell import HiARCells, NoiseBank
from fdistill.models.tiny_sd import tiny_sd_components
from fdistill.pipelines import FDistillPipeline, HiARPipeline, LabelEmbeddingModel
from fdistill.schedules import EDMSchedule, scheduler_for


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def encode_prompt_works_in_isolation(pipeline_class, components: dict, get_inputs: Callable[[], dict]) -> dict | None:
    """diffusers' ``test_encode_prompt_works_in_isolation`` (tests/pipelines/test_pipelines_common.py), step by
    step. A class without ``encode_prompt`` passes at once: the test returns, as for diffusers' class-conditional
    DiTPipeline; returns None then. Otherwise: encode_prompt on a pipeline holding only the text encoders and
    tokenizers, called with the inputs it names and the __call__ defaults of its other required arguments; its
    outputs, matched to their names in encode_prompt's ``return`` (diffusers' ReturnNameVisitor), feed a
    pipeline without text encoders, whose output must equal the full pipeline's. Returns those embeddings.
    ``get_inputs`` gives fresh inputs (new generators) per call, as diffusers' ``get_dummy_inputs``."""
    if not hasattr(pipeline_class, "encode_prompt"):
        return None
    text_only = {k: v if "text" in k or "tokenizer" in k else None for k, v in components.items()}
    pipe = pipeline_class(**text_only)
    params = inspect.signature(pipe.encode_prompt).parameters
    call_params = inspect.signature(pipe.__call__).parameters
    inputs = get_inputs()
    encode_inputs = {k: inputs.pop(k) for k in list(inputs) if k in params}
    for name, p in params.items():
        if p.default is inspect.Parameter.empty and name not in encode_inputs and name != "kwargs":
            assert name in call_params and call_params[name].default is not inspect.Parameter.empty, \
                f"{name} has no default in either encode_prompt or __call__"
            encode_inputs[name] = call_params[name].default
    with torch.no_grad():
        encoded = pipe.encode_prompt(**encode_inputs)
    visitor = ReturnNameVisitor()
    visitor.visit(ast.parse(textwrap.dedent(inspect.getsource(pipeline_class.encode_prompt))))
    embeds = {k: v for k, v in zip(visitor.return_names, encoded, strict=True) if k in call_params}
    without_text = {k: None if "text" in k or "tokenizer" in k else v for k, v in components.items()}
    isolated_inputs = {**inputs, **embeds}
    if call_params.get("negative_prompt") is not None and call_params["negative_prompt"].default is not None:
        isolated_inputs["negative_prompt"] = None  # its embeddings are computed already
    isolated = quiet(pipeline_class(**without_text))(**isolated_inputs)[0]
    full = quiet(pipeline_class(**components))(**get_inputs())[0]
    assert_close_up_to_rounding(isolated, full)
    return embeds


# -- FDistillPipeline: no prompt to encode -----------------------------------------------------
def test_fdistill_pipeline_passes_diffusers_encode_prompt_test_without_a_prompt():
    """The class-conditional demo pipeline has no encode_prompt, so diffusers' common test returns at once (it
    used to run, build the pipeline with unet=None and fail in encode_prompt: there is no prompt to encode)."""
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=11)
    components = dict(unet=unet, scheduler=scheduler_for(EDMSchedule()))

    def inputs():
        return dict(class_labels=[3], generator=seeded(0), output_type="np")

    assert encode_prompt_works_in_isolation(FDistillPipeline, components, inputs) is None
    assert quiet(FDistillPipeline(**components))(**inputs())[0].shape == (1, 8, 8, 1)


# -- HiARPipeline: text encoder, encode_prompt ------------------------------------------------------
@pytest.fixture(scope="module")
def hiar_text_components() -> dict:
    sd_components = tiny_sd_components()
    torch.manual_seed(0)
    return dict(transformer=CausalWanTransformer3DModel(**TINY).eval(),
                scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=None,
                text_encoder=sd_components["text_encoder"], tokenizer=sd_components["tokenizer"],
                label_embedding=None)


HIAR_SIZE = dict(num_frames=2, height=8, width=8, frames_per_block=1, denoising_steps=[1000, 500])


def test_hiar_encode_prompt_follows_wan(hiar_text_components):
    pipe = HiARPipeline(**hiar_text_components)
    prompt_embeds, negative = pipe.encode_prompt("a cat")  # no device; guidance on by default, as WanPipeline
    assert prompt_embeds.shape == negative.shape == (1, 77, 32)
    empty, _ = pipe.encode_prompt("", do_classifier_free_guidance=False)
    assert_close_up_to_rounding(negative, empty)
    embeds, negative = pipe.encode_prompt(["a cat", "a dog"], num_videos_per_prompt=3,
                                          do_classifier_free_guidance=False)
    assert embeds.shape == (6, 77, 32) and negative is None
    torch.testing.assert_close(embeds[3], embeds[5], atol=0, rtol=0)  # exact: a prompt's videos are consecutive


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_hiar_encode_prompt_works_in_isolation(hiar_text_components, guidance_scale):
    def inputs():
        return dict(prompt="a red car", generator=seeded(0), output_type="latent", guidance_scale=guidance_scale,
                    **HIAR_SIZE)

    embeds = encode_prompt_works_in_isolation(HiARPipeline, hiar_text_components, inputs)
    assert set(embeds) == {"prompt_embeds", "negative_prompt_embeds"}


def test_hiar_negative_prompt_is_the_unconditional_branch(hiar_text_components):
    pipe = quiet(HiARPipeline(**hiar_text_components))
    def run(prompt, **kwargs):
        return pipe(prompt=prompt, generator=seeded(0), output_type="latent", **HIAR_SIZE, **kwargs).frames

    # w = 0: the unconditional branch alone, with its own KV caches (batched with the other branch)
    assert_close_up_to_rounding(run("a dog", guidance_scale=0.0, negative_prompt="a cat"), run("a cat"))
    assert (run("a dog", guidance_scale=3.0) - run("a dog")).abs().max() > 1e-3


# -- HiARPipeline: check_inputs, prepare_latents, callbacks, batches --------------------------------
@pytest.fixture(scope="module")
def pipe() -> HiARPipeline:
    torch.manual_seed(0)
    transformer = CausalWanTransformer3DModel(**{**TINY, "in_channels": 1, "out_channels": 1}).eval()
    return quiet(HiARPipeline(transformer, FlowMatchEulerDiscreteScheduler(shift=2.0),
                              label_embedding=LabelEmbeddingModel(10, 32, 1), frames_per_block=2, height=16,
                              width=16, num_frames=4, denoising_steps=[1000, 500]))


def test_check_inputs_takes_wan_arguments(pipe):
    embeds = torch.zeros(1, 3, 32)
    pipe.check_inputs(None, None, 16, 16, embeds, None, ["latents"], num_frames=4)  # WanPipeline's order
    with pytest.raises(ValueError, match="not both"):
        pipe.check_inputs(None, "blurry", 16, 16, embeds, embeds, num_frames=4)
    with pytest.raises(ValueError, match=r"callback_on_step_end_tensor_inputs \['prompt_embeds'\].*valid: latents"):
        pipe.check_inputs(None, None, 16, 16, embeds, None, ["prompt_embeds"], num_frames=4)
    with pytest.raises(ValueError, match="height=15 must be a positive multiple of 2"):
        pipe.check_inputs(None, None, 15, 16, embeds, num_frames=4)
    with pytest.raises(ValueError, match="labels guide against the null label"):
        pipe.check_inputs(None, "blurry", 16, 16, labels=[3], num_frames=4)
    with pytest.raises(ValueError, match="single-process order"):
        pipe(labels=[3], order="pipelined", guidance_scale=2.0)


def test_prepare_latents_is_the_noise_bank(pipe):
    bank = pipe.prepare_latents(2, 1, 16, 16, 4, 2, generator=seeded(0))
    assert isinstance(bank, NoiseBank) and bank.block_shape == (2, 1, 2, 16, 16)
    again = pipe.prepare_latents(2, 1, 16, 16, 4, 2, generator=seeded(0))
    torch.testing.assert_close(bank.initial(1), again.initial(1), atol=0, rtol=0)  # exact: the same seed
    with pytest.raises(ValueError, match=r"latents of shape \(2, 1, 3, 16, 16\) do not match"):
        pipe.prepare_latents(2, 1, 16, 16, 4, 2, latents=torch.zeros(2, 1, 3, 16, 16))


def test_callback_runs_once_per_cell(pipe):
    calls = []

    def record(p, i, t, kwargs):
        calls.append((i, float(t), tuple(kwargs["latents"].shape)))
        return kwargs

    plain = pipe(labels=[3], generator=seeded(0), output_type="latent").frames
    out = pipe(labels=[3], generator=seeded(0), output_type="latent", callback_on_step_end=record).frames
    torch.testing.assert_close(out, plain, atol=0, rtol=0)  # exact: the callback changed nothing, same kernels
    assert pipe.num_timesteps == 4 == len(calls)  # 2 blocks · 2 steps
    assert [i for i, _, _ in calls] == [0, 1, 2, 3]
    times = [t for _, t, _ in calls]  # hierarchical: step-first, t_0 = 1000 for both blocks, then t_1
    assert times[:2] == pytest.approx([1000, 1000]) and times[2] == times[3] < 999
    assert {shape for _, _, shape in calls} == {(1, 1, 2, 16, 16)}


@pytest.mark.parametrize("order", ["hierarchical", "wavefront", "sequential"])
def test_callback_latents_replace_the_cells(pipe, order):
    def zero_finished_blocks(p, i, t, kwargs):
        if float(t) < 999:  # the last of 2 steps: these latents are the block's x̂0
            kwargs["latents"] = torch.zeros_like(kwargs["latents"])
        return kwargs

    out = pipe(labels=[3], generator=seeded(0), output_type="latent", order=order,
               callback_on_step_end=zero_finished_blocks).frames
    assert out.abs().sum() == 0



@pytest.mark.parametrize("fused", [True, False])
def test_callback_latents_reach_the_kv_cache(pipe, fused, monkeypatch):
    """Block 0's latents after step 0 are written into step 0's cache for block 1 (context "next"):
    the write must carry the callback's values, not the ones it replaced."""
    def zero_first_cell(p, i, t, kwargs):
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == 0 else kwargs

    inputs, forward = [], HiARCells.forward

    def recording(cells, forwards):
        inputs.extend(fw.x.clone() for fw in forwards)
        return forward(cells, forwards)

    monkeypatch.setattr(HiARCells, "forward", recording)
    pipe(labels=[3], generator=seeded(0), output_type="latent", fused=fused, callback_on_step_end=zero_first_cell)
    # forwards: denoise (0, 0), then (fused) write + denoise (0, 1) in one, or (not fused) the write alone
    written = inputs[1][:, :, :2]
    assert inputs[1].shape[2] == (4 if fused else 2) and written.abs().sum() == 0 and inputs[0].abs().sum() > 0


def test_callback_may_change_the_guidance_scale(pipe):
    def increase_guidance(p, i, t, kwargs):
        p._guidance_scale += 1.0
        return kwargs

    pipe(labels=[3], generator=seeded(0), guidance_scale=2.0, callback_on_step_end=increase_guidance,
         callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)
    assert pipe.guidance_scale == 2.0 + pipe.num_timesteps  # diffusers' test_callback_cfg


def test_num_videos_per_prompt(pipe):
    videos = pipe(labels=[1, 2], num_videos_per_prompt=2, generator=seeded(0), output_type="latent").frames
    assert videos.shape == (4, 1, 4, 16, 16)
    assert (videos[0] - videos[1]).abs().max() > 1e-3  # own noise per video
    repeated = pipe(labels=[1, 1, 2, 2], generator=seeded(0), output_type="latent").frames
    assert_close_up_to_rounding(videos, repeated)


# -- video metrics read the pipeline's outputs ----------------------------------------------------
@pytest.fixture(scope="module")
def outputs(pipe) -> dict:
    return {t: pipe(labels=[3, 7], num_frames=6, generator=seeded(1), output_type=t).frames for t in ("np", "pt")}


METRICS = {
    "temporal_flickering": lambda v, **kw: metrics.temporal_flickering(v, **kw),
    "subject_consistency": lambda v, **kw: metrics.subject_consistency(v, **kw),
    "flow_magnitude": lambda v, **kw: metrics.flow_magnitude(v, **kw),
    "dynamic_degree": lambda v, **kw: metrics.dynamic_degree(v, **kw),
    "frame_features": lambda v, **kw: metrics.frame_features(v, **kw),
    "frame_confidence": lambda v, **kw: metrics.frame_confidence(v, **kw),
    "centroid_speed": lambda v, **kw: torch.tensor(metrics.centroid_speed(v, **kw)),
    "frame_accuracy": lambda v, **kw: torch.tensor(metrics.frame_accuracy(v, torch.tensor([3, 7]), **kw)),
    "temporal_drift": lambda v, **kw: torch.tensor(list(metrics.temporal_drift(v, **kw).values())),
    "evaluate_video": lambda v, **kw: torch.tensor(list(metrics.evaluate_video(v, **kw).values())),
}


@pytest.mark.parametrize("name", list(METRICS))
@pytest.mark.parametrize("output_type", ["np", "pt"])
def test_metrics_take_the_pipeline_frames(outputs, name, output_type):
    frames = outputs[output_type]
    assert isinstance(frames, np.ndarray if output_type == "np" else torch.Tensor)
    reference = outputs["pt"].permute(0, 2, 1, 3, 4) * 2 - 1  # the metrics' own (B, C, F, H, W) in [-1, 1]
    expected = METRICS[name](reference, layout="latent")
    assert_close_up_to_rounding(METRICS[name](frames), expected)  # layout detected
    assert_close_up_to_rounding(METRICS[name](frames, layout=output_type), expected)


def test_ambiguous_layouts_ask_for_layout():
    three_grey_frames = torch.rand(2, 3, 1, 8, 8)  # (B, F=3, C=1) "pt", or (B, C=3, F=1) "latent"
    with pytest.raises(ValueError, match="fits both 'latent' and 'pt': pass layout="):
        metrics.temporal_flickering(three_grey_frames)
    assert metrics.temporal_flickering(three_grey_frames.expand(2, 3, 2, 8, 8), layout="latent").shape == (2,)
    with pytest.raises(ValueError, match="fits no layout"):
        metrics.temporal_flickering(torch.zeros(1, 4, 5, 8, 8))
    with pytest.raises(ValueError, match="unknown layout 'bcfhw'; valid: latent, pt, np"):
        metrics.as_videos(three_grey_frames, layout="bcfhw")
    rgb = np.random.default_rng(0).random((1, 4, 8, 8, 3), dtype=np.float32)
    assert metrics.as_videos(rgb).shape == (1, 3, 4, 8, 8)  # colour stays colour; the pipeline's grey -> 1 channel
