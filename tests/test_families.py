"""Every teacher family, on a tiny folder written by diffusers' own pipeline with its public scheduler:
noise levels equal diffusers', the teacher's multi-step sample equals the stock pipeline's, the family
distils end to end, and the stock one-step call of the export equals the training-time student forward."""

import json
import subprocess
import sys
import textwrap

import diffusers
import numpy as np
import pytest
import torch

from fdistill.cli import main
from fdistill.families import FAMILIES, FamilyNet, family_for, load_family
from fdistill.models.tiny_pipelines import TINY_FAMILIES, tiny_pipeline
from fdistill.schedules import FlowMatchingSchedule, VPSchedule

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning",
                                        "ignore:__array:DeprecationWarning")

PROMPTS = ["a cat", "a red car"]
RESOLUTION = {"flux": 16}  # Flux's stock default is 1024 px whatever the folder: train the tiny one at 16 px
GUIDANCE = {"flux": 3.5, "dit": 2.0}  # Flux: the guidance embedding's input; the others: CFG scale


def overrides(name, folder, out):
    """The same command for every family; only teacher.path changes (plus Flux's size and DiT's labels)."""
    args = ["teacher.kind=pipeline", f"teacher.path={folder}", "data.name=teacher_samples", "data.num_samples=4",
            "data.sample_steps=2", "warmup.steps=1", "warmup.ode_pairs=4", "warmup.ode_steps=2", "warmup.batch_size=2",
            "steps=1", "batch_size=2", "critic_steps=1", "checkpoint_every=10", "progress=false",
            f"objective.guidance_scale={GUIDANCE.get(name, 1.5)}", f"output_dir={out}"]
    if FAMILIES[name].conditioning == "text":
        args.append(f"data.prompts=[{', '.join(PROMPTS)}]")
    if name in RESOLUTION:
        args.append(f"data.resolution={RESOLUTION[name]}")
    return args


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    for name in TINY_FAMILIES:
        tiny_pipeline(name).save_pretrained(root / name)
    return root


@pytest.fixture(scope="module")
def students(folders, tmp_path_factory):
    """Each family distilled by the same command (1 warm-up, 1 f-distill step)."""
    root = tmp_path_factory.mktemp("students")
    for name in TINY_FAMILIES:
        assert main(["distill", *overrides(name, folders / name, root / name)]) == 0, name
    return root


def family(folders, name, guidance=1.0):
    size = RESOLUTION.get(name)
    return load_family(folders / name, resolution=None if size is None else (size, size), guidance_scale=guidance)


def stock(folder):
    pipe = diffusers.DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_each_folder_is_read_by_its_family(folders, name):
    assert family_for(folders / name) is FAMILIES[name]


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_teacher_noise_levels_equal_diffusers(folders, name):
    fam = family(folders, name)
    scheduler, schedule = fam.pipe.scheduler, fam.schedule
    if isinstance(schedule, VPSchedule):
        torch.testing.assert_close(schedule.alphas_cumprod, scheduler.alphas_cumprod.double(), rtol=1e-6, atol=1e-8)
        return
    assert isinstance(schedule, FlowMatchingSchedule)
    # the levels the stock pipeline steps through at 7 steps (Flux: with μ of the training size's tokens)
    kwargs = {}
    if scheduler.config.use_dynamic_shifting:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        kwargs["mu"] = calculate_shift(fam.image_seq_len, max_shift=scheduler.config.max_shift)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 7, 7), **kwargs)
    torch.testing.assert_close(schedule.sampling_times(7), scheduler.sigmas, rtol=1e-5, atol=1e-6)


def reference_scheduler(fam):
    """The diffusers scheduler that is fdistill's reference sampler: DDIM with trailing spacing and a final
    ᾱ of 1 (VP), or the teacher's own flow-matching Euler scheduler."""
    config = fam.pipe.scheduler.config
    if isinstance(fam.schedule, VPSchedule):
        return diffusers.DDIMScheduler.from_config(config, timestep_spacing="trailing", set_alpha_to_one=True,
                                                   clip_sample=False)
    return diffusers.FlowMatchEulerDiscreteScheduler.from_config(config)


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_teacher_sample_equals_the_stock_pipelines(folders, name):
    """With guidance (CFG, or Flux's embedding) the unconditional input is the pipeline's own too."""
    steps, guidance = 4, GUIDANCE.get(name, 2.0)  # 4 divides 1000: DDIM steps to t − 1000//N, our grid point
    fam = family(folders, name, guidance)
    net = FamilyNet(fam.model, fam)
    from fdistill.denoisers import Denoiser

    cfg = guidance if fam.guidance == "cfg" else 1.0
    den = Denoiser(net, fam.schedule, "condition", cfg, fam.null_condition())
    items = [3, 7] if fam.conditioning == "class" else PROMPTS
    cond = fam.conditions(items)
    z = torch.randn(2, *fam.sample_shape, generator=torch.Generator().manual_seed(0))
    ours = fam.schedule.sample(lambda x, t: den(x, t, cond), z, steps)

    pipe = stock(folders / name)
    pipe.scheduler = reference_scheduler(fam)
    kwargs = {"num_inference_steps": steps, "guidance_scale": guidance}
    if name in RESOLUTION:
        kwargs.update(height=RESOLUTION[name], width=RESOLUTION[name])
    if name == "dit":  # DiTPipeline draws its own noise (the same draw from the same generator) and always decodes
        images = pipe(class_labels=items, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images
        decoded = ((fam.images_from_latents(ours) / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(images, decoded, atol=1e-4)
        return
    if name == "pixart":
        kwargs["use_resolution_binning"] = False
    if name == "sd3":
        kwargs["sigmas"] = np.linspace(1.0, 1 / steps, steps)  # the grid fdistill's sampler uses (Flux's default)
    latents = pipe._pack_latents(z, 2, *fam.sample_shape) if name == "flux" else z
    theirs = pipe(prompt=items, latents=latents, output_type="latent", **kwargs).images
    if name == "flux":
        theirs = pipe._unpack_latents(theirs, fam.height, fam.width, fam.vae_scale_factor)
    torch.testing.assert_close(theirs.float(), ours, rtol=1e-4, atol=1e-4 * ours.abs().max().item())


def training_forward(folders, students, name, z, items):
    """The student's training-time forward (OneStepGenerator over the family adapter) on the exported weights."""
    from fdistill.denoisers import Denoiser
    from fdistill.training.distill import OneStepGenerator
    from fdistill.training.distill_config import DataSpec, TeacherSpec
    from fdistill.training.sources import load_teacher_for

    data = DataSpec(name="teacher_samples", prompts=PROMPTS if FAMILIES[name].conditioning == "text" else [],
                    resolution=RESOLUTION.get(name))
    teacher = load_teacher_for(TeacherSpec(kind="pipeline", path=str(folders / name)), GUIDANCE.get(name, 1.5),
                               torch.device("cpu"), data)
    fam = teacher.components["family"]
    exported = getattr(stock(students / name / "pipeline"), fam.denoiser_name)
    student = OneStepGenerator(Denoiser(FamilyNet(exported, fam), fam.schedule, "condition"), teacher.student_t,
                               teacher.student_scale)
    with torch.no_grad():
        return fam, student(z, fam.conditions(items))


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_stock_one_step_call_equals_the_training_forward(folders, students, name):
    pipe = stock(students / name / "pipeline")
    assert type(pipe).__name__ == json.loads((folders / name / "model_index.json").read_text())["_class_name"]
    record = json.loads((students / name / "pipeline" / "fdistill.json").read_text())
    call = record["stock_call"]
    assert call["num_inference_steps"] == 1
    items = [1, 4] if FAMILIES[name].conditioning == "class" else PROMPTS
    shape = family(folders, name).sample_shape
    z = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    fam, ours = training_forward(folders, students, name, z, items)
    if name == "dit":
        images = pipe(class_labels=items, generator=torch.Generator().manual_seed(0), output_type="np", **call).images
        decoded = ((fam.images_from_latents(ours) / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(images, decoded, atol=1e-5)
        return
    latents = pipe._pack_latents(z, 2, *shape) if name == "flux" else z
    theirs = pipe(prompt=items, latents=latents, output_type="latent", **call).images
    if name == "flux":
        theirs = pipe._unpack_latents(theirs, fam.height, fam.width, fam.vae_scale_factor)
    torch.testing.assert_close(theirs.float(), ours, rtol=1e-5, atol=1e-5 * ours.abs().max().item())


def test_exports_run_in_stock_diffusers_without_fdistill(students):
    """A process that never imports fdistill loads every export by diffusers' own loader and draws images."""
    code = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        import torch
        from diffusers import DiffusionPipeline
        for name in {list(TINY_FAMILIES)!r}:
            folder = Path({str(students)!r}) / name / "pipeline"
            call = json.loads((folder / "fdistill.json").read_text())["stock_call"]
            pipe = DiffusionPipeline.from_pretrained(folder)
            pipe.set_progress_bar_config(disable=True)
            condition = {{"class_labels": [1]}} if name == "dit" else {{"prompt": "a cat"}}
            image = pipe(**condition, generator=torch.Generator().manual_seed(0), **call).images[0]
            print(name, type(pipe).__name__, image.size)
        print("fdistill imported:", any(m.startswith("fdistill") for m in sys.modules))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "fdistill imported: False" in res.stdout
    for name in TINY_FAMILIES:
        assert f"{name} {json.loads((students / name / 'pipeline' / 'model_index.json').read_text())['_class_name']}" \
            in res.stdout


def test_export_keeps_the_teachers_scheduler_options_and_makes_one_step_trailing(folders, students):
    for name in TINY_FAMILIES:
        teacher = json.loads((folders / name / "scheduler" / "scheduler_config.json").read_text())
        student = json.loads((students / name / "pipeline" / "scheduler" / "scheduler_config.json").read_text())
        for key in ("beta_start", "beta_end", "beta_schedule", "prediction_type", "shift", "clip_sample"):
            if key in teacher and key in student and (name, key) != ("flux", "shift"):  # Flux's is resolved
                assert student[key] == teacher[key], (name, key)
        if "timestep_spacing" in student:
            assert student["timestep_spacing"] == "trailing", name
    flux = json.loads((students / "flux" / "pipeline" / "scheduler" / "scheduler_config.json").read_text())
    assert flux["use_dynamic_shifting"] is False and flux["shift"] == pytest.approx(family(folders, "flux").schedule.shift)
    pixart = json.loads((students / "pixart" / "pipeline" / "scheduler" / "scheduler_config.json").read_text())
    assert pixart["_class_name"] == "DDIMScheduler"  # PixArt's one-step rule keeps x̂0 of a 2-tuple step


@pytest.mark.parametrize(("class_name", "message"), [
    ("WanPipeline", "video students are distilled with `fdistill distill-video`"),
    ("KandinskyV22Pipeline", "which fdistill cannot distil yet; supported text-to-image"),
])
def test_other_pipelines_are_refused_by_name(tmp_path, capsys, class_name, message):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    out = tmp_path / "run"
    code = main(["distill", "teacher.kind=pipeline", f"teacher.path={folder}", "data.name=teacher_samples",
                 "data.prompts=[a cat]", f"output_dir={out}"])
    err = capsys.readouterr().err
    assert code == 2 and class_name in err and message in err and not out.exists()


def test_class_conditional_family_refuses_prompts_and_text_family_needs_them(folders, tmp_path, capsys):
    base = ["distill", "teacher.kind=pipeline", "data.name=teacher_samples", f"output_dir={tmp_path / 'run'}"]
    assert main([*base, f"teacher.path={folders / 'dit'}", "data.prompts=[a cat]"]) == 2
    assert "DiT pipeline, which is class-conditional: remove data.prompts" in capsys.readouterr().err
    assert main([*base, f"teacher.path={folders / 'sdxl'}"]) == 2
    assert "SDXL pipeline, which is text-conditioned: set data.prompts" in capsys.readouterr().err


def test_resolution_that_does_not_tile_the_latents_is_refused(folders):
    with pytest.raises(ValueError, match="data.resolution height=18 must be a positive multiple of 4"):
        load_family(folders / "flux", resolution=(18, 18))
