"""FDistillPipeline (class-conditional and unconditional testbeds, pixel or latent space): save/load round
trips, outputs, determinism, validation, text inputs and text folders refused, dtypes; tiny SD components."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, EDMEulerScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor
from tolerances import assert_close_up_to_rounding

from fdistill.models.tiny_sd import CAPTION_WORDS, tiny_sd_components
from fdistill.pipelines import FDistillPipeline, export_pipeline
from fdistill.schedules import EDMSchedule, FlowMatchingSchedule, VPSchedule, scheduler_for


def tiny_unet(num_class_embeds: int | None = 11, seed: int = 0, channels: int = 1) -> UNet2DModel:
    """A digits-shaped student: 8×8, 1 channel (4 on SD VAE latents), class-conditional with a null label (10 + 1)."""
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8, in_channels=channels, out_channels=channels, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8, num_class_embeds=num_class_embeds,
    ).eval()


def latent_components(seed: int = 0, prediction_type: str = "v_prediction") -> dict:
    """A latent testbed: a class-conditional student on the tiny SD VAE's 8×8×4 latents (16×16 RGB images),
    with SD's DDIM scheduler."""
    sd = tiny_sd_components(seed=seed, prediction_type=prediction_type)
    return dict(unet=tiny_unet(seed=seed, channels=4), scheduler=sd["scheduler"], vae=sd["vae"])


def quiet(pipe: FDistillPipeline) -> FDistillPipeline:
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class UnetCalls:
    """Records (sample, timestep) of every unet forward."""

    def __init__(self, unet):
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.handle = unet.register_forward_pre_hook(self.hook)

    def hook(self, module, args):
        self.calls.append((args[0].clone(), torch.as_tensor(args[1]).clone()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture(scope="module")
def class_pipe() -> FDistillPipeline:
    return quiet(FDistillPipeline(unet=tiny_unet(), scheduler=scheduler_for(EDMSchedule())))


@pytest.fixture(scope="module")
def latent_pipe() -> FDistillPipeline:
    return quiet(FDistillPipeline(**latent_components()))


# -- save / load ----------------------------------------------------------------------------


def test_class_conditional_edm_round_trip(class_pipe, tmp_path):
    class_pipe.save_pretrained(tmp_path)
    loaded = quiet(FDistillPipeline.from_pretrained(tmp_path))
    assert isinstance(loaded.scheduler, EDMEulerScheduler) and isinstance(loaded.schedule, EDMSchedule)
    assert set(loaded.components) == {"unet", "scheduler", "vae"} and loaded.vae is None
    assert not {"text_encoder", "tokenizer"} & set(json.loads((tmp_path / "model_index.json").read_text()))
    assert loaded.config.student_t is None and loaded.conditioning == "class"
    kwargs = dict(class_labels=[0, 3, 10], output_type="np")
    before = class_pipe(generator=seeded(7), **kwargs).images
    after = loaded(generator=seeded(7), **kwargs).images
    assert_close_up_to_rounding(before, after)  # reloaded weights (tests/tolerances.py)
    # optional components stay None through a second round trip
    loaded.save_pretrained(tmp_path / "again")
    assert FDistillPipeline.from_pretrained(tmp_path / "again").vae is None


def test_diffusers_own_loader_finds_the_pipeline(class_pipe, tmp_path, monkeypatch):
    """DiffusionPipeline.from_pretrained works by name once fdistill.pipelines is imported, and by
    diffusers' custom-pipeline route (pipeline.py in the folder) without that registration."""
    import diffusers
    from diffusers import DiffusionPipeline

    class_pipe.save_pretrained(tmp_path)
    assert (tmp_path / "pipeline.py").is_file()
    kwargs = dict(class_labels=[1, 2], output_type="np")
    before = class_pipe(generator=seeded(3), **kwargs).images
    by_name = quiet(DiffusionPipeline.from_pretrained(tmp_path))
    assert type(by_name) is FDistillPipeline
    assert_close_up_to_rounding(by_name(generator=seeded(3), **kwargs).images, before)
    monkeypatch.delattr(diffusers, "FDistillPipeline")
    with pytest.raises(AttributeError, match="FDistillPipeline"):
        DiffusionPipeline.from_pretrained(tmp_path)
    # (diffusers copies pipeline.py into its modules cache, HF_HOME/modules)
    custom = quiet(DiffusionPipeline.from_pretrained(tmp_path, custom_pipeline=str(tmp_path), trust_remote_code=True))
    assert type(custom).__name__ == "FDistillPipeline"
    assert_close_up_to_rounding(custom(generator=seeded(3), **kwargs).images, before)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_latent_pipeline_round_trip(prediction_type, tmp_path):
    pipe = quiet(FDistillPipeline(**latent_components(seed=1, prediction_type=prediction_type)))
    pipe.save_pretrained(tmp_path)
    loaded = quiet(FDistillPipeline.from_pretrained(tmp_path))
    assert isinstance(loaded.scheduler, DDIMScheduler) and isinstance(loaded.vae, AutoencoderKL)
    assert isinstance(loaded.schedule, VPSchedule) and loaded.schedule.prediction_type == prediction_type
    assert loaded.conditioning == "class" and loaded.vae_scale_factor == 2
    kwargs = dict(class_labels=[1, 2], output_type="np")
    assert_close_up_to_rounding(pipe(generator=seeded(3), **kwargs).images,
                                loaded(generator=seeded(3), **kwargs).images)


def test_student_t_is_saved_and_used(tmp_path):
    pipe = export_pipeline(tiny_unet(), EDMSchedule(), tmp_path, student_t=2.5)
    loaded = quiet(FDistillPipeline.from_pretrained(tmp_path))
    assert loaded.config.student_t == 2.5
    assert loaded.student_times(1).tolist() == [2.5]
    with pytest.raises(ValueError, match="student_t=2.5 is not above the next sampling time"):
        loaded.student_times(3)
    noise = randn_tensor((2, 1, 8, 8), generator=seeded(0))
    with UnetCalls(loaded.unet) as rec:
        loaded(class_labels=[1, 2], latents=noise, output_type="pt")
    (sample, timestep), = rec.calls
    s = EDMSchedule()
    torch.testing.assert_close(timestep, s.model_time(torch.tensor([2.5, 2.5])))
    torch.testing.assert_close(sample, s.model_input(2.5 * noise, torch.tensor([2.5, 2.5])))
    default = quiet(FDistillPipeline(unet=pipe.unet, scheduler=pipe.scheduler))
    assert not np.allclose(default(class_labels=[1, 2], latents=noise, output_type="np").images,
                           loaded(class_labels=[1, 2], latents=noise, output_type="np").images)


def test_export_pipeline_writes_a_loadable_pipeline(tmp_path):
    comps = latent_components()
    pipe = export_pipeline(comps["unet"], VPSchedule(beta_schedule="scaled_linear", beta_start=0.00085,
                                                     beta_end=0.012, prediction_type="v_prediction"),
                           tmp_path, vae=comps["vae"])
    assert (tmp_path / "model_index.json").exists() and (tmp_path / "vae").is_dir()
    loaded = FDistillPipeline.from_pretrained(tmp_path)
    assert isinstance(loaded.vae, AutoencoderKL)
    assert loaded.schedule.prediction_type == "v_prediction"
    assert loaded.schedule.beta_schedule == "scaled_linear" and isinstance(pipe, FDistillPipeline)


def test_export_refuses_a_schedule_the_scheduler_cannot_carry(tmp_path):
    with pytest.raises(ValueError, match="prediction_type='sample'"):
        export_pipeline(tiny_unet(), FlowMatchingSchedule(prediction_type="sample"), tmp_path)


# -- outputs --------------------------------------------------------------------------------


def test_output_types_and_shapes_pixel_space(class_pipe):
    kwargs = dict(class_labels=[1, 2, 3], generator=None)
    pil = class_pipe(**kwargs).images
    assert len(pil) == 3 and all(im.mode == "L" and im.size == (8, 8) for im in pil)
    latent = class_pipe(**{**kwargs, "generator": seeded()}, output_type="latent").images
    pt = class_pipe(**{**kwargs, "generator": seeded()}, output_type="pt").images
    arr = class_pipe(**{**kwargs, "generator": seeded()}, output_type="np").images
    assert latent.shape == pt.shape == (3, 1, 8, 8) and arr.shape == (3, 8, 8, 1)
    torch.testing.assert_close(pt, (latent / 2 + 0.5).clamp(0, 1))
    np.testing.assert_allclose(arr, pt.permute(0, 2, 3, 1).numpy())
    images, = class_pipe(**kwargs, return_dict=False)
    assert len(images) == 3


def test_output_types_and_shapes_latent_space(latent_pipe):
    pil = latent_pipe(class_labels=3).images
    assert len(pil) == 1 and pil[0].mode == "RGB" and pil[0].size == (16, 16)
    assert latent_pipe(class_labels=3, output_type="latent").images.shape == (1, 4, 8, 8)
    pt = latent_pipe(class_labels=3, output_type="pt", height=32, width=24).images
    assert pt.shape == (1, 3, 32, 24) and 0 <= pt.min() and pt.max() <= 1


def test_unconditional_unet_uses_batch_size():
    pipe = quiet(FDistillPipeline(unet=tiny_unet(num_class_embeds=None),
                                  scheduler=scheduler_for(FlowMatchingSchedule(shift=3.0))))
    assert pipe.conditioning is None
    assert pipe(batch_size=3, num_images_per_prompt=2, output_type="pt").images.shape == (6, 1, 8, 8)
    assert pipe(output_type="pt").images.shape == (1, 1, 8, 8)


# -- determinism ----------------------------------------------------------------------------


def test_latents_reproduce_generator_images(class_pipe, latent_pipe):
    noise = randn_tensor((2, 1, 8, 8), generator=seeded(5))
    a = class_pipe(class_labels=[4, 5], generator=seeded(5), output_type="np").images
    b = class_pipe(class_labels=[4, 5], latents=noise, output_type="np").images
    np.testing.assert_array_equal(a, b)  # exact: the same noise through the same kernels
    noise = randn_tensor((1, 4, 8, 8), generator=seeded(5))
    a = latent_pipe(class_labels=[7], generator=seeded(5), output_type="np").images
    b = latent_pipe(class_labels=[7], latents=noise, output_type="np").images
    np.testing.assert_array_equal(a, b)


def test_generator_determinism(class_pipe):
    run = lambda g, steps=1: class_pipe(class_labels=[1, 2], generator=g, output_type="np",
                                        num_inference_steps=steps).images
    np.testing.assert_array_equal(run(seeded(1)), run(seeded(1)))  # exact: the same call repeated
    assert not np.allclose(run(seeded(1)), run(seeded(2)))
    np.testing.assert_array_equal(run(seeded(1), 3), run(seeded(1), 3))
    # one generator per image: image i depends only on generator i
    per_image = run([seeded(11), seeded(12)], 2)
    alone = class_pipe(class_labels=[2], generator=[seeded(12)], output_type="np", num_inference_steps=2).images
    np.testing.assert_allclose(per_image[1:], alone, atol=1e-6)  # batch size changes float rounding


def test_class_labels_repeat_per_image(class_pipe):
    noise = randn_tensor((4, 1, 8, 8), generator=seeded(0))
    grouped = class_pipe(class_labels=[3, 8], num_images_per_prompt=2, latents=noise, output_type="np").images
    flat = class_pipe(class_labels=torch.tensor([3, 3, 8, 8]), latents=noise, output_type="np").images
    np.testing.assert_array_equal(grouped, flat)  # exact: identical label tensors and batch size


# -- multistep ------------------------------------------------------------------------------


def test_multistep_renoises_x0_on_the_student_grid(class_pipe, latent_pipe):
    assert latent_pipe.student_times(4).tolist() == [999, 749, 499, 249]
    times = class_pipe.student_times(2)
    assert times[0] == 80 and EDMSchedule().t_min < times[1] < 80
    noise = randn_tensor((1, 1, 8, 8), generator=seeded(0))
    with UnetCalls(class_pipe.unet) as rec:
        two = class_pipe(class_labels=[5], latents=noise, generator=seeded(1), num_inference_steps=2,
                         output_type="latent").images
    assert len(rec.calls) == 2
    s = EDMSchedule()
    torch.testing.assert_close(rec.calls[1][1], s.model_time(times[1:]))
    # the second input is x̂0 of the first step re-noised with the generator's first draw
    one = class_pipe(class_labels=[5], latents=noise, output_type="latent").images
    fresh = randn_tensor((1, 1, 8, 8), generator=seeded(1))
    torch.testing.assert_close(rec.calls[1][0], s.model_input(s.add_noise(one, fresh, times[1:]), times[1:]))
    assert not torch.allclose(one, two)
    explicit = class_pipe(class_labels=[5], latents=noise, generator=seeded(1), timesteps=times.tolist(),
                          output_type="latent").images
    torch.testing.assert_close(explicit, two)


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(class_labels=[1], output_type="jpg"), "output_type='jpg'.*pil, np, pt, latent"),
    (dict(class_labels=[1, 2], batch_size=3), "batch_size=3"),
    (dict(class_labels=[3, 11]), r"\[11\] out of range.*0\.\.10"),
    (dict(class_labels=-1), r"\[-1\] out of range"),
    (dict(class_labels=[1.5]), "must be integers"),
    (dict(), "class-conditional: pass class_labels"),
    (dict(class_labels=[1], num_inference_steps=0), "num_inference_steps must be >= 1, got 0"),
    (dict(class_labels=[1], latents=torch.zeros(1, 1, 4, 4)), r"latents of shape \(1, 1, 4, 4\)"),
    (dict(class_labels=[1], timesteps=[1.0, 5.0]), "strictly decreasing"),
    (dict(class_labels=[1, 2], generator=[torch.Generator()]), "1 generators for 2 images"),
    # the unet halves the size once (two levels): 17 would end in a raw tensor-size error inside it
    (dict(class_labels=[1], height=17), r"^height=17 must be a positive multiple of 2 \(the VAE's downsampling factor 1 "
                                        r"× the unet's 2\)$"),
])
def test_class_pipeline_rejects_bad_inputs(class_pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        class_pipe(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(class_labels=[1], height=15), r"height=15 must be a positive multiple of 4 \(the VAE's downsampling factor 2 "
                                        r"× the unet's 2\)"),
    (dict(class_labels=[1], height=18), "height=18 must be a positive multiple of 4"),
    (dict(class_labels=[1], width=0), "width=0 must be a positive multiple"),
    (dict(class_labels=[1], latents=torch.zeros(4, 8, 8)), r"latents must be \(B, C, H, W\), got \(4, 8, 8\)"),
    (dict(class_labels=[1], latents=torch.zeros(1, 4, 4, 4)), r"latents of shape \(1, 4, 4, 4\).*\(1, 4, 8, 8\)"),
])
def test_latent_pipeline_rejects_bad_inputs(latent_pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        latent_pipe(**kwargs)


def test_unconditional_pipeline_rejects_class_labels():
    pipe = FDistillPipeline(unet=tiny_unet(num_class_embeds=None), scheduler=scheduler_for(EDMSchedule()))
    with pytest.raises(ValueError, match="this UNet2DModel has no class embedding, it takes no class_labels"):
        pipe(class_labels=[1])
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        pipe(batch_size=0)
    with pytest.raises(ValueError, match=f"class_labels='a cat' is text: {TEXT_REFUSED}"):
        pipe("a cat")


# -- text: refused, with a pointer to the teacher's own pipeline class -----------------------

TEXT_REFUSED = "FDistillPipeline is class-conditional .* text-to-image students are exported as their teacher's own"


@pytest.mark.parametrize("kwargs, given", [
    (dict(class_labels=[1], prompt="a cat"), "got prompt"),
    (dict(class_labels=[1], prompt_embeds=torch.zeros(1, 77, 32)), "got prompt_embeds"),
    (dict(class_labels=[1], prompt="a", negative_prompt="b"), "got prompt, negative_prompt"),
    (dict(class_labels="a cat"), r"class_labels='a cat' is text, not ints in \[0, 11\)"),
    (dict(class_labels=["a cat", "a dog"]), r"class_labels=\['a cat', 'a dog'\] is text, not ints in \[0, 11\)"),
])
def test_text_inputs_point_to_the_teachers_pipeline(class_pipe, kwargs, given):
    with pytest.raises(ValueError, match=f"{given}: {TEXT_REFUSED}"):
        class_pipe(**kwargs)


def test_prompt_as_first_argument_and_unknown_keywords(class_pipe):
    with pytest.raises(ValueError, match=f"class_labels='a cat' is text.*{TEXT_REFUSED}"):
        class_pipe("a cat")  # the old first positional argument, prompt
    with pytest.raises(TypeError, match=r"FDistillPipeline\.__call__\(\) got an unexpected keyword argument 'guidance'"):
        class_pipe(class_labels=[1], guidance=2.0)


def test_text_conditional_unet_is_refused():
    comps = tiny_sd_components()
    with pytest.raises(ValueError, match=rf"this UNet2DConditionModel is text-conditional \(cross_attention_dim=32\): "
                                         f"{TEXT_REFUSED}"):
        FDistillPipeline(unet=comps["unet"], scheduler=comps["scheduler"], vae=comps["vae"])


def test_older_text_folders_are_refused_before_loading(tmp_path):
    """A text-to-image student as an older fdistill saved it: an FDistillPipeline folder with text_encoder and
    tokenizer components (and a UNet2DConditionModel). diffusers alone would ignore the text components with a
    warning and load the rest."""
    comps = tiny_sd_components()
    for name, comp in comps.items():
        comp.save_pretrained(tmp_path / name)
    index = {name: [type(comp).__module__.split(".")[0], type(comp).__name__] for name, comp in comps.items()}
    index.update(_class_name="FDistillPipeline", _diffusers_version="0.42.1", student_t=None, height=None, width=None)
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    message = rf"this folder has text components \(text_encoder, tokenizer\): {TEXT_REFUSED}"
    with pytest.raises(ValueError, match=message):
        FDistillPipeline.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        DiffusionPipeline.from_pretrained(tmp_path)  # by name: fdistill.pipelines is imported


def test_teacher_class_students_are_refused_as_fdistill_pipelines(tmp_path):
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline(**tiny_sd_components(), safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=rf"text components \(text_encoder, tokenizer\): {TEXT_REFUSED}"):
        FDistillPipeline.from_pretrained(tmp_path)
    assert type(DiffusionPipeline.from_pretrained(tmp_path)) is StableDiffusionPipeline  # the way to load it


def test_older_class_conditional_folders_still_load_quietly(class_pipe, tmp_path, monkeypatch, caplog):
    """Older fdistill wrote null text_encoder/tokenizer entries for every pipeline; diffusers would report
    them as unexpected config attributes."""
    class_pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    (tmp_path / "model_index.json").write_text(json.dumps({**index, "text_encoder": [None, None],
                                                           "tokenizer": [None, None]}))
    monkeypatch.setattr(logging.getLogger("diffusers"), "propagate", True)  # diffusers' logs reach caplog
    kwargs = dict(class_labels=[1, 2], output_type="np")
    with caplog.at_level(logging.WARNING):
        for loaded in (FDistillPipeline.from_pretrained(tmp_path), DiffusionPipeline.from_pretrained(tmp_path)):
            assert set(loaded.components) == {"unet", "scheduler", "vae"}
            assert_close_up_to_rounding(quiet(loaded)(generator=seeded(3), **kwargs).images,
                                        class_pipe(generator=seeded(3), **kwargs).images)
    assert "not expected" not in caplog.text


# -- devices and dtypes ---------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*torch_dtype.*:FutureWarning")
def test_device_and_dtype_casts(class_pipe, tmp_path):
    assert class_pipe.to("cpu").device.type == "cpu"
    class_pipe.save_pretrained(tmp_path)
    wide = quiet(FDistillPipeline.from_pretrained(tmp_path, torch_dtype=torch.float64))
    assert wide.unet.dtype == torch.float64 and wide.dtype == torch.float64
    # float64 noise is a different random stream: compare on the same float32 latents
    kwargs = dict(class_labels=[1, 7], output_type="pt", latents=randn_tensor((2, 1, 8, 8), generator=seeded(0)))
    ref = class_pipe(**kwargs).images
    out = wide(**kwargs).images
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), ref, atol=1e-5, rtol=0)
    half = quiet(FDistillPipeline.from_pretrained(tmp_path)).to(torch.bfloat16)
    assert half.unet.dtype == torch.bfloat16
    torch.testing.assert_close(half(**kwargs).images.float(), ref, atol=0.05, rtol=0)


def test_latent_pipeline_in_bfloat16():
    pipe = quiet(FDistillPipeline(**latent_components(seed=2))).to(torch.bfloat16)
    ref = quiet(FDistillPipeline(**latent_components(seed=2)))
    assert pipe.vae.dtype == torch.bfloat16
    kwargs = dict(class_labels=[1, 2], generator=seeded(0), output_type="np")
    latents = randn_tensor((2, 4, 8, 8), generator=seeded(0))
    out = pipe(**{**kwargs, "latents": latents}).images
    assert out.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(out, ref(**{**kwargs, "latents": latents}).images, atol=0.05)


# -- tiny SD components and package surface -------------------------------------------------


def test_tiny_sd_components_are_seeded_and_sd_shaped():
    state = torch.get_rng_state()
    a, b, c = tiny_sd_components(seed=0), tiny_sd_components(seed=0), tiny_sd_components(seed=1)
    assert torch.equal(state, torch.get_rng_state())
    assert set(a) == {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    wa, wb, wc = (next(x["unet"].parameters()) for x in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a["unet"].config.cross_attention_dim == a["text_encoder"].config.hidden_size == 32
    assert a["scheduler"].config.beta_schedule == "scaled_linear" and a["vae"].config.scaling_factor == 0.18215
    tok = a["tokenizer"]
    ids = tok("A photo of a CAT!", padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(ids) == 77 == a["text_encoder"].config.max_position_embeddings
    assert max(ids) < a["text_encoder"].config.vocab_size
    words = tok.convert_ids_to_tokens(ids[:7])
    assert words == ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>", "!</w>"]
    assert all(len(tok(w).input_ids) == 3 for w in CAPTION_WORDS)


def test_import_fdistill_is_light():
    code = "import sys, fdistill; assert 'diffusers' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_loader_module_is_written_before_diffusers_saves_or_pushes(class_pipe, tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline

    seen = {}
    original = DiffusionPipeline.save_pretrained

    def spy(self, save_directory, *args, **kwargs):  # where push_to_hub would upload the folder
        seen["loader"] = (tmp_path / "out" / "pipeline.py").is_file()
        return original(self, save_directory, *args, **kwargs)

    monkeypatch.setattr(DiffusionPipeline, "save_pretrained", spy)
    class_pipe.save_pretrained(tmp_path / "out")
    assert seen == {"loader": True}
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="should be a directory"):
        class_pipe.save_pretrained(tmp_path / "file")
