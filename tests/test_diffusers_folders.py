"""Folders and schedulers as diffusers saves them: read exactly, or refused by name before anything runs."""

import inspect
import json
import shutil
import subprocess
import sys
import warnings

import diffusers
import pytest
import torch

from fdistill.cli import main
from fdistill.schedules import (
    EDM_SCHEDULERS,
    FLOW_SCHEDULERS,
    VP_SCHEDULERS,
    EDMSchedule,
    FlowMatchingSchedule,
    VPSchedule,
    schedule_from_scheduler,
    scheduler_for,
)

# numpy 2 deprecations raised inside diffusers' Karras-type schedulers, thousands per construction
pytestmark = pytest.mark.filterwarnings("ignore:__array:DeprecationWarning")

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
ZERO_SNR = [n for n in VP_SCHEDULERS if "rescale_betas_zero_snr" in inspect.signature(getattr(diffusers, n)).parameters]
TRAINED_BETAS = torch.linspace(1e-4, 0.03, 1000).tolist()


def scheduler(name, **options):
    return getattr(diffusers, name)(**options)


# -- noise schedules ----------------------------------------------------------------------------------
BETAS = {"sd": SD, "cosine": {"beta_schedule": "squaredcos_cap_v2"}, "trained_betas": {"trained_betas": TRAINED_BETAS}}
VP_CASES = [(n, label) for n in VP_SCHEDULERS for label in BETAS] + [(n, "zero_snr") for n in ZERO_SNR]
BETAS["zero_snr"] = {**SD, "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}


@pytest.mark.parametrize(("name", "betas"), VP_CASES)
def test_vp_noise_levels_equal_the_schedulers_own(name, betas):
    options = BETAS[betas]
    sched = scheduler(name, **options)
    schedule = schedule_from_scheduler(sched)
    assert isinstance(schedule, VPSchedule) and schedule.prediction_type == sched.config.prediction_type
    alpha, sigma = schedule.alpha_sigma(torch.arange(1000, dtype=torch.float64))
    # Euler-type schedulers store a zero terminal ᾱ as 2⁻²⁴ ≈ 6e-8
    torch.testing.assert_close(alpha**2, sched.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(sigma**2, 1 - sched.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)
    if options.get("rescale_betas_zero_snr"):
        assert alpha[-1] == 0 and sigma[-1] == 1


def test_vp_sigmas_equal_eulers():
    sched = scheduler("EulerDiscreteScheduler", **SD, timestep_spacing="trailing")
    sched.set_timesteps(10)
    alpha, sigma = VPSchedule.from_scheduler(sched).alpha_sigma(sched.timesteps.double())
    torch.testing.assert_close(sigma / alpha, sched.sigmas[:-1].double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options", [{"use_karras_sigmas": True}, {"timestep_spacing": "leading", "steps_offset": 1},
                                     {"use_exponential_sigmas": True}, {"final_sigmas_type": "sigma_min"}])
def test_vp_sampler_grid_options_leave_the_noise_levels(options):
    """They only choose where a sampler evaluates the network; fdistill's sampler keeps its trailing grid."""
    plain = schedule_from_scheduler(scheduler("DPMSolverMultistepScheduler", **SD))
    other = schedule_from_scheduler(scheduler("DPMSolverMultistepScheduler", **SD, **options))
    assert torch.equal(plain.alphas_cumprod, other.alphas_cumprod)
    assert torch.equal(plain.sampling_times(4), other.sampling_times(4))


def test_zero_snr_v_prediction_recovers_x0_at_t_max():
    s = VPSchedule(**SD, prediction_type="v_prediction", rescale_betas_zero_snr=True)
    x0, eps, t = torch.randn(4, 3), torch.randn(4, 3), torch.full((4,), s.t_max)
    x_t = s.add_noise(x0, eps, t)
    assert torch.equal(x_t, eps) and torch.equal(s.prior(eps), eps)  # pure noise at ᾱ_T = 0
    v = -x0  # v = α ε − σ x0 with α = 0, σ = 1
    torch.testing.assert_close(s.to_x0(v, x_t, t), x0)


@pytest.mark.parametrize("name", ["FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"])
def test_flow_match_schedulers_keep_their_shift(name):
    sched = scheduler(name, shift=3.0)
    schedule = schedule_from_scheduler(sched)
    assert isinstance(schedule, FlowMatchingSchedule) and schedule.shift == 3.0
    # the schedulers' training levels: shift applied to t = 1000/1000 … 1/1000
    torch.testing.assert_close(schedule.shift_t(torch.arange(1000, 0, -1) / 1000), sched.sigmas, rtol=1e-5, atol=1e-6)


FLOW_SIGMAS = dict(prediction_type="flow_prediction", use_flow_sigmas=True)


@pytest.mark.parametrize("name", ["UniPCMultistepScheduler", "DPMSolverMultistepScheduler",
                                  "DPMSolverSinglestepScheduler", "DEISMultistepScheduler"])
def test_flow_sigma_schedulers_are_flow_matching_with_their_flow_shift(name):
    sched = scheduler(name, **FLOW_SIGMAS, flow_shift=5.0)
    schedule = schedule_from_scheduler(sched)
    assert isinstance(schedule, FlowMatchingSchedule) and schedule.shift == 5.0
    sched.set_timesteps(6)
    x0, eps = torch.randn(2, 3), torch.randn(2, 3)
    for i in (0, 3):  # the marginal: x_σ = (1 − σ) x0 + σ ε at the scheduler's own σ
        torch.testing.assert_close(sched.add_noise(x0, eps, sched.timesteps[i:i + 1]),
                                   schedule.add_noise(x0, eps, sched.sigmas[i]))
    # their step grids: the flow shift applied to an unshifted grid
    u = torch.linspace(1, 1 / 1000, 7, dtype=torch.float64)
    u = u[:-1] if name == "UniPCMultistepScheduler" else (1 - u).flip(0)[:-1]
    torch.testing.assert_close(schedule.shift_t(u).float(), sched.sigmas[:6], rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("name", EDM_SCHEDULERS)
def test_edm_schedulers_sigmas(name):
    sched = scheduler(name, sigma_min=0.01, sigma_max=40.0, rho=5.0)
    schedule = schedule_from_scheduler(sched)
    assert isinstance(schedule, EDMSchedule) and (schedule.sigma_max, schedule.rho) == (40.0, 5.0)
    sched.set_timesteps(12)
    torch.testing.assert_close(schedule.sampling_times(12), sched.sigmas.float(), rtol=1e-5, atol=1e-6)


def test_every_accepted_scheduler_class_is_tested():
    tested = {n for n, _ in VP_CASES} | set(FLOW_SCHEDULERS) | set(EDM_SCHEDULERS)
    assert tested == set(VP_SCHEDULERS) | set(FLOW_SCHEDULERS) | set(EDM_SCHEDULERS)


REFUSED = [
    ("FlowMatchEulerDiscreteScheduler", {"use_dynamic_shifting": True}, "use_dynamic_shifting=True"),
    ("FlowMatchEulerDiscreteScheduler", {"shift_terminal": 0.1}, "shift_terminal=0.1"),
    ("FlowMatchEulerDiscreteScheduler", {"use_karras_sigmas": True}, "use_karras_sigmas=True"),
    ("FlowMatchEulerDiscreteScheduler", {"use_exponential_sigmas": True}, "use_exponential_sigmas=True"),
    ("FlowMatchEulerDiscreteScheduler", {"use_beta_sigmas": True}, "use_beta_sigmas=True"),
    ("FlowMatchEulerDiscreteScheduler", {"invert_sigmas": True}, "invert_sigmas=True"),
    ("FlowMatchEulerDiscreteScheduler", {"num_train_timesteps": 500}, "num_train_timesteps=500"),
    ("UniPCMultistepScheduler", {**FLOW_SIGMAS, "use_dynamic_shifting": True}, "use_dynamic_shifting=True"),
    ("UniPCMultistepScheduler", {**FLOW_SIGMAS, "shift_terminal": 0.1}, "shift_terminal=0.1"),
    ("UniPCMultistepScheduler", {"prediction_type": "flow_prediction"}, "use_flow_sigmas=False"),
    ("UniPCMultistepScheduler", {"use_flow_sigmas": True}, "use_flow_sigmas=True with prediction_type='epsilon'"),
    ("DDPMScheduler", {"variance_type": "learned_range"}, "variance_type='learned_range'"),
    ("EulerDiscreteScheduler", {"timestep_type": "continuous", "prediction_type": "v_prediction"},
     "timestep_type='continuous'"),
    ("DDIMScheduler", {**SD, "rescale_betas_zero_snr": True}, "prediction_type='epsilon' is undefined at zero "
                                                              "terminal SNR"),
    ("HeunDiscreteScheduler", {"beta_schedule": "exp"}, "beta_schedule 'exp' is not supported"),
    ("EDMEulerScheduler", {"sigma_schedule": "exponential"}, "sigma_schedule='exponential'"),
    ("EDMEulerScheduler", {"prediction_type": "v_prediction"}, "prediction_type='v_prediction'"),
    ("LCMScheduler", {}, "no fdistill schedule for LCMScheduler"),
]


@pytest.mark.parametrize(("name", "options", "message"), REFUSED, ids=[m for _, _, m in REFUSED])
def test_unsupported_options_are_refused_by_name(name, options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        schedule_from_scheduler(scheduler(name, **options))


def test_noise_levels_no_option_explains_are_refused():
    sched = scheduler("DDIMScheduler", **SD)
    sched.alphas_cumprod = sched.alphas_cumprod * 0.99  # as a scheduler with an option fdistill does not read
    with pytest.raises(ValueError, match=r"DDIMScheduler's noise levels differ .*max \|Δᾱ\| = 0.00"):
        schedule_from_scheduler(sched)


@pytest.mark.parametrize("schedule", [
    VPSchedule(**SD, prediction_type="v_prediction", rescale_betas_zero_snr=True),
    VPSchedule(trained_betas=TRAINED_BETAS, prediction_type="sample"),
    VPSchedule(beta_schedule="sigmoid"),  # beyond DDIM's betas: exported as DDPMScheduler
])
def test_exported_scheduler_carries_the_beta_options(schedule, tmp_path):
    from diffusers import UNet2DModel

    from fdistill.pipelines import FDistillPipeline, export_pipeline

    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    export_pipeline(unet, schedule, tmp_path)
    saved = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert saved["rescale_betas_zero_snr"] == schedule.rescale_betas_zero_snr
    assert saved["trained_betas"] == schedule.trained_betas
    loaded = FDistillPipeline.from_pretrained(tmp_path).schedule
    assert torch.equal(loaded.alphas_cumprod, schedule.alphas_cumprod)
    assert loaded.prediction_type == schedule.prediction_type


def test_wan_unipc_round_trips_as_flow_match_euler():
    back = scheduler_for(schedule_from_scheduler(scheduler("UniPCMultistepScheduler", **FLOW_SIGMAS, flow_shift=3.0)))
    assert type(back).__name__ == "FlowMatchEulerDiscreteScheduler" and back.config.shift == 3.0


# -- a stock Wan2.1 folder in HiARPipeline --------------------------------------------------------------
WORDS = "a an the red green blue cat dog digit moves left right".split()


def tiny_t5_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` with T5's special tokens, built without the hub."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)


def tiny_wan_transformer(seed=0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                                 out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32).eval()


def tiny_wan_pipeline(**kwargs):
    """diffusers' WanPipeline test components at toy size, a UMT5 text encoder and Wan2.1's UniPC scheduler."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(0)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                               num_heads=4, relative_attention_num_buckets=8)).eval()
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    scheduler = UniPCMultistepScheduler(**FLOW_SIGMAS, flow_shift=3.0)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                       transformer=tiny_wan_transformer(), **kwargs)


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan") / "Wan2.1-T2V-tiny"
    tiny_wan_pipeline().save_pretrained(folder)
    return folder


def load_hiar(folder, **kwargs):
    from fdistill.pipelines import HiARPipeline

    pipe = HiARPipeline.from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_stock_wan_folder_loads_the_causal_transformer_and_flow_shift(wan_folder, tmp_path):
    from diffusers import WanTransformer3DModel

    from fdistill.models.causal_wan import CausalWanTransformer3DModel

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = load_hiar(wan_folder)
    assert not [w for w in caught if "drops" in str(w.message)]  # a Wan2.1 folder holds nothing HiAR drops
    assert type(pipe.transformer) is CausalWanTransformer3DModel
    wan = WanTransformer3DModel.from_pretrained(wan_folder, subfolder="transformer")
    assert dict(pipe.transformer.config) == {**wan.config, "_class_name": pipe.transformer.config["_class_name"]}
    theirs = wan.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in pipe.transformer.state_dict().items())
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and pipe.scheduler.config.shift == 3.0
    assert isinstance(pipe.schedule, FlowMatchingSchedule) and pipe.schedule.shift == 3.0
    assert pipe.config.denoising_steps == [1000, 750, 500, 250]  # not in a Wan folder: HiAR's defaults

    pipe.save_pretrained(tmp_path / "hiar")  # and it is a HiAR folder from then on
    again = load_hiar(tmp_path / "hiar")
    assert type(again.transformer) is CausalWanTransformer3DModel and again.scheduler.config.shift == 3.0


def test_wan_folder_dtype_reaches_the_causal_transformer(wan_folder):
    pipe = load_hiar(wan_folder, dtype={"transformer": torch.bfloat16, "default": torch.float32})
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32


def test_stock_wan_folder_generates(wan_folder):
    pipe = load_hiar(wan_folder, frames_per_block=1)
    video = pipe("a red cat moves left", num_frames=5, height=32, width=32,
                 generator=torch.Generator().manual_seed(0)).frames
    assert video.shape == (1, 5, 32, 32, 3) and ((video >= 0) & (video <= 1)).all()


def test_one_block_ode_hiar_matches_wan_pipeline(wan_folder):
    """One block holding every latent frame, ODE re-noising and Wan's own timesteps: HiAR's cell loop is
    WanPipeline's Euler sampler (the DDIM step of a flow model is its Euler step)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    hiar = load_hiar(wan_folder)
    wan = WanPipeline.from_pretrained(wan_folder)
    wan.set_progress_bar_config(disable=True)
    # Wan2.1's UniPC is a second-order solver; its Euler scheduler takes the same steps as HiAR's ODE cells
    wan.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ref.set_timesteps(4)
    sigma = ref.sigmas[:-1].double()
    steps = (1000 * sigma / (3.0 - 2.0 * sigma)).tolist()  # unshifted: HiAR applies the shift itself
    noise = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    common = dict(prompt="a red cat moves left", num_frames=5, height=32, width=32, guidance_scale=1.0)
    for output_type, tol in (("latent", 1e-5), ("np", 1e-5)):
        a = wan(**common, num_inference_steps=4, latents=noise.clone(), output_type=output_type).frames
        b = hiar(**common, denoising_steps=steps, frames_per_block=2, renoise="ode", latents=noise.clone(),
                 output_type=output_type).frames
        torch.testing.assert_close(torch.as_tensor(b), torch.as_tensor(a), rtol=tol, atol=tol)


def test_wan22_settings_are_dropped_with_a_warning(tmp_path):
    tiny_wan_pipeline(transformer_2=tiny_wan_transformer(1), boundary_ratio=0.875,
                      expand_timesteps=True).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match=r"HiARPipeline drops: transformer_2 .*; boundary_ratio=0.875; "
                                         r"expand_timesteps=True"):
        pipe = load_hiar(tmp_path)
    assert not hasattr(pipe, "transformer_2")


def test_wan_folder_with_a_vp_scheduler_is_refused(wan_folder, tmp_path):
    folder = tmp_path / "wan"
    shutil.copytree(wan_folder, folder)
    shutil.rmtree(folder / "scheduler")
    diffusers.DDIMScheduler().save_pretrained(folder / "scheduler")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "scheduler": ["diffusers", "DDIMScheduler"]}))
    with pytest.raises(ValueError, match="DDIMScheduler is a VPSchedule; HiARPipeline needs a flow-matching"):
        load_hiar(folder)


def test_other_wan_pipelines_are_refused(wan_folder, tmp_path):
    folder = tmp_path / "wan_i2v"
    shutil.copytree(wan_folder, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "WanImageToVideoPipeline"}))
    with pytest.raises(ValueError, match="WanImageToVideoPipeline folder: HiARPipeline reads text-to-video WanPipeline"):
        load_hiar(folder)


# -- teachers refused at the door ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """A StableDiffusionPipeline folder (tiny SD1.5 components), as diffusers saves it."""
    from fdistill.models.tiny_sd import tiny_sd_components

    folder = tmp_path_factory.mktemp("sd") / "sd15"
    diffusers.StableDiffusionPipeline(**tiny_sd_components(), safety_checker=None, feature_extractor=None,
                                      requires_safety_checker=False).save_pretrained(folder)
    return folder


def refused_run(tmp_path, capsys, *overrides):
    """``fdistill distill`` with ``overrides``: (exit code, stderr); asserts no output folder was made."""
    out = tmp_path / "run"
    code = main(["distill", f"output_dir={out}", *overrides])
    assert not out.exists()
    return code, capsys.readouterr().err


PIPELINE = ("teacher.kind=pipeline", "data.name=teacher_samples", "data.prompts=[a cat]")


@pytest.mark.parametrize(("overrides", "message"), [
    (("teacher.kind=asset",), "is a diffusers pipeline folder (model_index.json: StableDiffusionPipeline): set "
                              "teacher.kind=pipeline"),
    (("teacher.kind=pipeline", "data.prompts=[a cat]"), "needs data.name=teacher_samples"),
    (("teacher.kind=pipeline", "data.name=teacher_samples"), "set data.prompts"),
])
def test_mismatched_settings_name_the_one_to_change(sd_folder, tmp_path, capsys, overrides, message):
    code, err = refused_run(tmp_path, capsys, f"teacher.path={sd_folder}", *overrides)
    assert code == 2 and message in err


def test_incomplete_folders_are_refused_at_the_door(sd_folder, tmp_path, capsys):
    folder = tmp_path / "no_model_index"
    shutil.copytree(sd_folder, folder, ignore=shutil.ignore_patterns("tokenizer", "model_index.json"))
    code, err = refused_run(tmp_path, capsys, *PIPELINE, f"teacher.path={folder}")
    assert code == 2 and "has no model_index.json and is not an SD1.x/2.x component folder (no tokenizer)" in err
    (tmp_path / "empty").mkdir()
    code, err = refused_run(tmp_path, capsys, f"teacher.path={tmp_path / 'empty'}")
    assert code == 2 and "is a folder without teacher.json: teacher.kind=asset reads" in err


def test_asset_file_as_pipeline_teacher_names_teacher_kind(tmp_path, capsys):
    from fdistill.teachers import DIGITS_TEACHER

    code, err = refused_run(tmp_path, capsys, *PIPELINE, f"teacher.path={DIGITS_TEACHER}")
    assert code == 2 and "is a file" in err and "set teacher.kind=asset" in err


def test_unreadable_scheduler_stops_before_the_run_starts(sd_folder, tmp_path, capsys):
    folder = tmp_path / "sd_zero_snr_eps"
    shutil.copytree(sd_folder, folder)
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "rescale_betas_zero_snr": True}))
    code, err = refused_run(tmp_path, capsys, *PIPELINE, f"teacher.path={folder}")
    assert code == 2 and "zero terminal SNR" in err


def test_config_validation_imports_no_diffusers(tmp_path):
    folder = tmp_path / "wan"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    code = ("import sys\nfrom fdistill.training.config import ConfigError, load_config\n"
            "from fdistill.training.distill_config import DistillConfig\n"
            f"try:\n    load_config(DistillConfig, None, ['teacher.kind=pipeline', 'teacher.path={folder}'])\n"
            "except ConfigError as e:\n    print('refused:', e)\n"
            "print('diffusers imported:', 'diffusers' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "is a WanPipeline folder, a video pipeline" in res.stdout, res.stderr[-2000:]
    assert "diffusers imported: False" in res.stdout


def test_zero_snr_v_prediction_teacher_distils_and_exports_its_schedule(tmp_path):
    """SD2.1-style zero terminal SNR: the teacher's levels are read exactly and the student's scheduler says so."""
    from fdistill.models.tiny_sd import SD15_SCHEDULER, tiny_sd_components

    components = tiny_sd_components(prediction_type="v_prediction")
    components["scheduler"] = diffusers.DDIMScheduler(**SD15_SCHEDULER, prediction_type="v_prediction",
                                                      rescale_betas_zero_snr=True, timestep_spacing="trailing")
    teacher = tmp_path / "sd21_zero_snr"
    diffusers.StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                      requires_safety_checker=False).save_pretrained(teacher)
    out = tmp_path / "run"
    assert main(["distill", *PIPELINE, f"teacher.path={teacher}", f"output_dir={out}", "steps=1", "batch_size=2",
                 "critic_steps=1", "data.num_samples=2", "data.sample_steps=2", "checkpoint_every=10"]) == 0
    saved = json.loads((out / "pipeline" / "scheduler" / "scheduler_config.json").read_text())
    assert saved["rescale_betas_zero_snr"] is True and saved["prediction_type"] == "v_prediction"
    student = diffusers.StableDiffusionPipeline.from_pretrained(out / "pipeline")
    schedule = schedule_from_scheduler(student.scheduler)
    assert torch.equal(schedule.alphas_cumprod, VPSchedule.from_scheduler(components["scheduler"]).alphas_cumprod)
    assert schedule.alphas_cumprod[-1] == 0
