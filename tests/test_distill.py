import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hiar_common import build_config
from safetensors.torch import load_file

from fdistill.training.config import ConfigError, build, load_config
from fdistill.training.distill import DistillConfig, distill

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(teacher, out, **kw):
    return build_config(DistillConfig, {
        "teacher": {"path": str(teacher)},
        "warmup": {"steps": 1, "ode_pairs": 8, "ode_steps": 2, "batch_size": 4},
        "steps": 2, "batch_size": 4, "critic_steps": 1, "checkpoint_every": 1, "log_every": 1,
        "output_dir": str(out), "objective": {"divergence": "js"}, "checkpoints_to_keep": 5,
    }, **kw)


def student_weights(run: Path, step: int) -> dict:
    return load_file(str(run / f"checkpoint-{step}" / "student.safetensors"))


def test_resumed_run_ends_with_the_same_weights(tiny_digits_teacher, tmp_path):
    full = distill(tiny_config(tiny_digits_teacher, tmp_path / "full", steps=3, export=False))
    distill(tiny_config(tiny_digits_teacher, tmp_path / "cut", steps=1, export=False))  # "killed" after step 2
    resumed = distill(tiny_config(tiny_digits_teacher, tmp_path / "cut", steps=3), resume="latest")
    a, b = student_weights(full, 4), student_weights(resumed, 4)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    ema_a = load_file(str(full / "checkpoint-4" / "ema.safetensors"))
    ema_b = load_file(str(resumed / "checkpoint-4" / "ema.safetensors"))
    for k in ema_a:
        torch.testing.assert_close(ema_a[k], ema_b[k], rtol=0, atol=0)
    norm = load_file(str(resumed / "checkpoint-4" / "ratio_normalizer.safetensors"))
    assert norm["seen"].any()  # the ratio normaliser's EMA is checkpointed
    lines = (resumed / "metrics.jsonl").read_text().splitlines()
    assert [int(line.split('"step": ')[1].split(",")[0]) for line in lines] == [1, 2, 3, 4]
    assert (resumed / "pipeline" / "model_index.json").is_file()


def test_every_divergence_is_one_trainer(tiny_digits_teacher, tmp_path, monkeypatch):
    """A discriminator that always says logit 0 (r ≡ 1, so h ≡ 1 after normalising) makes JS and forward-KL
    take reverse-KL's steps: the divergence enters only through h, nothing else in the trainer differs."""
    from fdistill.models.discriminator import FeatureHead

    monkeypatch.setattr(FeatureHead, "forward", lambda self, features: features[0].new_zeros(features[0].shape[0]))
    students = {}
    for divergence in ("reverse_kl", "jensen_shannon", "forward_kl"):
        out = distill(tiny_config(tiny_digits_teacher, tmp_path / divergence.replace(":", "_"), steps=2,
                                  warmup__steps=0, export=False, objective__divergence=divergence,
                                  objective__gan_weight=0.0))
        students[divergence] = student_weights(out, 2)
        assert (out / "checkpoint-2" / "discriminator_head.safetensors").is_file() == (divergence != "reverse_kl")
    for divergence in ("jensen_shannon", "forward_kl"):
        for k, v in students["reverse_kl"].items():
            torch.testing.assert_close(students[divergence][k], v, rtol=0, atol=0)


def test_exported_pipeline_samples_digits(tiny_digits_teacher, tmp_path):
    from fdistill.pipelines import FDistillPipeline

    out = distill(tiny_config(tiny_digits_teacher, tmp_path, steps=1))
    pipe = FDistillPipeline.from_pretrained(out / "pipeline")
    images = pipe(class_labels=[0, 3], generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 16, 16, 1) and images.min() >= 0 and images.max() <= 1


def test_bad_configs_stop_with_clear_messages(tiny_digits_teacher, tmp_path):
    with pytest.raises(ConfigError, match="unknown divergence 'nope'.*jensen_shannon"):
        tiny_config(tiny_digits_teacher, tmp_path, objective__divergence="nope")
    with pytest.raises(ConfigError, match="teacher.path .*does not exist"):
        tiny_config(tmp_path / "missing", tmp_path)
    with pytest.raises(ConfigError, match="unknown key.*'stepz'"):
        load_config(DistillConfig, None, ["stepz=3"])
    with pytest.raises(ConfigError, match="batch_size: expected int"):
        load_config(DistillConfig, None, ["batch_size=many"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(DistillConfig, tmp_path / "nope.yaml")


def test_shape_mismatch_between_teacher_and_data(tmp_path):
    from diffusers import UNet2DModel

    from fdistill.teachers import export_teacher_asset  # noqa: F401  (asset layout documented there)

    model = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                        layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, num_class_embeds=11)
    folder = tmp_path / "teacher"
    model.save_pretrained(folder / "model")
    (folder / "teacher.json").write_text('{"model_class": "UNet2DModel", "schedule": {"name": "edm", "kwargs": {}},'
                                         ' "num_classes": 10, "null_label": 10, "label_embedding": null}')
    with pytest.raises(ValueError, match=r"digits are \(1, 16, 16\) but the teacher samples \(1, 8, 8\)"):
        distill(tiny_config(folder, tmp_path / "run"))


def test_nan_loss_stops_and_keeps_checkpoints(tiny_digits_teacher, tmp_path, monkeypatch):
    from fdistill.objective import FDistillObjective

    out = tmp_path / "run"
    distill(tiny_config(tiny_digits_teacher, out, steps=1, export=False))
    monkeypatch.setattr(FDistillObjective, "generator_loss",
                        lambda self, x0, *args: ((x0 * float("nan")).mean(), {}))
    with pytest.raises(FloatingPointError, match="non-finite generator loss or gradient at step 3 "
                                                 "\\(1 update\\(s\\) in a row, max_bad_updates=0\\)"):
        distill(tiny_config(tiny_digits_teacher, out, steps=2), resume="latest")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert not any(torch.isnan(v).any() for v in student_weights(out, 2).values())


def test_a_non_finite_update_is_skipped_and_logged(tiny_digits_teacher, tmp_path, monkeypatch):
    """With max_bad_updates=1 one bad generator update is skipped (the student keeps its weights); the run goes on."""
    from fdistill.objective import FDistillObjective

    original, calls = FDistillObjective.generator_loss, []

    def once_nan(self, x0, *args):
        calls.append(1)
        loss, logs = original(self, x0, *args)
        return (loss * float("nan") if len(calls) == 1 else loss), logs

    monkeypatch.setattr(FDistillObjective, "generator_loss", once_nan)
    out = distill(tiny_config(tiny_digits_teacher, tmp_path / "run", steps=2, max_bad_updates=1, export=False))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("skipped_generator") for r in rows] == [None, 1.0, None]  # the first generator update only
    assert torch.equal(student_weights(out, 2)["denoiser.model.conv_in.weight"],
                       student_weights(out, 1)["denoiser.model.conv_in.weight"])  # skipped: weights kept


def test_text_conditioned_teacher_exports_text_to_image(tmp_path):
    """SD components saved one by one (no model_index.json) distil into a stock StableDiffusionPipeline."""
    from diffusers import DiffusionPipeline

    from fdistill.models.tiny_sd import tiny_sd_components

    teacher = tmp_path / "sd"
    for name, comp in tiny_sd_components().items():
        comp.save_pretrained(teacher / name)
    cfg = build(DistillConfig, {
        "teacher": {"kind": "pipeline", "path": str(teacher)}, "discriminator": {"feature_modules": ["mid_block"]},
        "data": {"name": "teacher_samples", "num_samples": 4, "sample_steps": 2, "prompts": ["a red square", "a cat"]},
        "objective": {"divergence": "js", "guidance_scale": 1.75},
        "warmup": {"steps": 1, "ode_pairs": 4, "ode_steps": 2, "batch_size": 2},
        "steps": 1, "batch_size": 2, "critic_steps": 1, "checkpoint_every": 10, "output_dir": str(tmp_path / "run"),
    })
    out = distill(cfg)
    pipe = DiffusionPipeline.from_pretrained(out / "pipeline")
    assert type(pipe).__name__ == "StableDiffusionPipeline" and pipe.text_encoder is not None
    saved = json.loads((out / "pipeline" / "scheduler" / "scheduler_config.json").read_text())
    assert saved["clip_sample"] is False and saved["timestep_spacing"] == "trailing"  # the teacher's DDIM options
    images = pipe(prompt="a cat", num_images_per_prompt=2, generator=torch.Generator().manual_seed(0),
                  num_inference_steps=1, guidance_scale=0.0, output_type="np").images
    assert images.shape == (2, 16, 16, 3) and (images >= 0).all()


DIST_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from conftest import TINY_UNET
from fdistill.training.config import build
from fdistill.training.distill import DistillConfig, distill
from fdistill.training.distributed import end_process_group
from fdistill.training.teacher import TeacherConfig, train_teacher
from fdistill.density_ratio import RatioNormalizer, normalize_weights
import torch.distributed as dist
distill(build(DistillConfig, {distill_cfg!r}))
distill(build(DistillConfig, {{**{distill_cfg!r}, "objective": {{"divergence": "js", "gan_weight": 0.0}},
                              "output_dir": {distill_cfg!r}["output_dir"] + "_no_gan"}}))
train_teacher(build(TeacherConfig, {teacher_cfg!r}))
rank = dist.get_rank()
norm = RatioNormalizer(num_bins=2, decay=0.0)
norm.update(torch.tensor([1.0 + rank * 2]), torch.tensor([0.1]))
h = normalize_weights(torch.tensor([1.0 + rank]))
print(f"RANK{{rank}} ema={{norm.ema.tolist()}} h={{h.item():.6f}}", flush=True)
end_process_group()
"""


def test_two_cpu_processes_match_one_process(tiny_digits_teacher, tmp_path):
    """DDP through accelerate (gloo): 2 processes × half the batch end where 1 process × the whole batch does."""
    from conftest import TINY_UNET

    from fdistill.training.teacher import TeacherConfig, train_teacher

    def configs(out):
        d = {"teacher": {"path": str(tiny_digits_teacher)}, "objective": {"divergence": "js"},
             "warmup": {"steps": 1, "ode_pairs": 8, "ode_steps": 2, "batch_size": 4}, "critic_warmup_steps": 1,
             "steps": 2, "batch_size": 4, "critic_steps": 2, "checkpoint_every": 4, "log_every": 2,
             "output_dir": str(out / "distill")}
        t = {"model": {"kind": "unet2d", "config": TINY_UNET}, "data": {"name": "digits", "kwargs": {"split": "train"}},
             "batch_size": 8, "steps": 3, "warmup_steps": 1, "checkpoint_every": 3, "output_dir": str(out / "teacher")}
        return d, t

    two, one = tmp_path / "two", tmp_path / "one"
    d2, t2 = configs(two)
    script = tmp_path / "dist_run.py"
    script.write_text(DIST_SCRIPT.format(tests=str(ROOT / "tests"), distill_cfg=d2, teacher_cfg=t2))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--standalone", str(script)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-1000:] + res.stderr[-3000:]
    # all-reduced statistics: both ranks see the mean of r over ranks (1 and 3 → 2) and the global mean of h
    assert "RANK0 ema=[2.0, 1.0] h=0.666667" in res.stdout and "RANK1 ema=[2.0, 1.0] h=1.333333" in res.stdout
    assert (two / "distill" / "pipeline" / "model_index.json").is_file()
    # without a GAN term the generator update reads the DDP-wrapped head without a gradient
    assert (two / "distill_no_gan" / "pipeline" / "model_index.json").is_file()

    d1, t1 = configs(one)
    distill(build(DistillConfig, d1))
    train_teacher(build(TeacherConfig, t1))
    for run, step, names in (("distill", 4, ("student", "fake_score", "discriminator_head")), ("teacher", 3, ("net",))):
        for name in names:
            a = load_file(str(one / run / f"checkpoint-{step}" / f"{name}.safetensors"))
            b = load_file(str(two / run / f"checkpoint-{step}" / f"{name}.safetensors"))
            assert a.keys() == b.keys()
            # float tolerance: the two runs sum the batch in another order (measured ≤ 1.3e-6). Attention key
            # biases are skipped: softmax ignores them, so their exact gradient is 0 and Adam turns the
            # rounding noise there into steps of ±lr (5.7e-5 measured)
            for k in (k for k in a if not k.endswith("to_k.bias")):
                torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{run}/{name}/{k}")


def test_bf16_mixed_precision_and_gradient_accumulation(tiny_digits_teacher, tmp_path):
    out = distill(tiny_config(tiny_digits_teacher, tmp_path, steps=1, export=False, mixed_precision="bf16",
                              gradient_accumulation_steps=2))
    weights = student_weights(out, 2)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())
    with pytest.raises(ConfigError, match="mixed_precision 'fp8' is not one of"):
        tiny_config(tiny_digits_teacher, tmp_path, mixed_precision="fp8")


def test_unconditional_student_and_pairs_without_dropped_classes(tiny_digits_teacher, tmp_path):
    """data.unconditional: every condition is the null label; warmup.drop_classes: no kept pair reads as them."""
    from fdistill.models.classifier import load_digits_classifier
    from fdistill.training.sources import RealData, load_teacher_for, ode_pairs, unconditional

    cpu = torch.device("cpu")
    cfg = tiny_config(tiny_digits_teacher, tmp_path / "a", data__unconditional=True, warmup__ode_pairs=32)
    teacher = unconditional(load_teacher_for(cfg.teacher, 1.0, cpu), cpu)
    null = teacher.denoiser.num_classes
    assert (teacher.conditions(5, torch.Generator()) == null).all()
    assert (RealData(cfg.data, cfg.seed, cfg.batch_size, teacher, cpu).c == null).all()
    classifier = load_digits_classifier()

    def classes(x):
        with torch.no_grad():
            return classifier(x.clamp(-1, 1)).argmax(1)

    _, c, x = ode_pairs(teacher, cfg.warmup, 0, cpu, None, batch_size=16)
    common = int(classes(x).mode().values)  # the class this random teacher makes most often
    dropped = tiny_config(tiny_digits_teacher, tmp_path / "b", warmup__ode_pairs=32, warmup__drop_classes=[common])
    z, c, x = ode_pairs(teacher, dropped.warmup, 0, cpu, None, batch_size=16)
    assert len(z) == 32 and (c == null).all()
    assert common not in classes(x).tolist()
    out = distill(tiny_config(tiny_digits_teacher, tmp_path / "run", steps=1, export=False, data__unconditional=True,
                              warmup__drop_classes=[common], warmup__ode_pairs=8))
    assert (out / "checkpoint-2").is_dir()


def test_ode_pair_cache_is_remade_when_its_settings_change(tiny_digits_teacher, tmp_path):
    from fdistill.training.sources import load_teacher_for, ode_pairs, unconditional

    cpu, cache = torch.device("cpu"), tmp_path / "ode_pairs.safetensors"
    cfg = tiny_config(tiny_digits_teacher, tmp_path / "a", data__unconditional=True, warmup__ode_pairs=16)
    teacher = unconditional(load_teacher_for(cfg.teacher, 1.0, cpu), cpu)
    _, _, x = ode_pairs(teacher, cfg.warmup, 0, cpu, cache, batch_size=16)
    _, _, again = ode_pairs(teacher, cfg.warmup, 0, cpu, cache, batch_size=16)
    torch.testing.assert_close(again, x)  # same settings: the cache
    _, _, other_seed = ode_pairs(teacher, cfg.warmup, 1, cpu, cache, batch_size=16)
    assert (other_seed - x).abs().amax() > 0.01  # same count, other seed: remade, not the stale pairs
    _, _, back = ode_pairs(teacher, cfg.warmup, 0, cpu, cache, batch_size=16)
    torch.testing.assert_close(back, x)


def test_drop_classes_are_checked_at_the_door(tiny_digits_teacher, tmp_path):
    with pytest.raises(ValueError, match=r"warmup.drop_classes \[10\].*0\.\.9"):
        tiny_config(tiny_digits_teacher, tmp_path, warmup__drop_classes=[3, 10])
    with pytest.raises(ValueError, match=r"warmup.drop_mode 'swap' is not one of \('remove', 'replace'\)"):
        tiny_config(tiny_digits_teacher, tmp_path, warmup__drop_classes=[3], warmup__drop_mode="swap")
    with pytest.raises(ValueError, match="leaves no digit class"):
        tiny_config(tiny_digits_teacher, tmp_path, warmup__drop_classes=list(range(10)))


def test_replaced_pairs_keep_every_noise_and_no_dropped_target(tiny_digits_teacher, tmp_path):
    """warmup.drop_mode=replace: same noise as the full pairs, dropped targets redrawn with a kept class."""
    from fdistill.models.classifier import load_digits_classifier
    from fdistill.training.sources import load_teacher_for, ode_pairs, unconditional

    cpu = torch.device("cpu")
    classifier = load_digits_classifier()

    def classes(x):
        with torch.no_grad():
            return classifier(x.clamp(-1, 1)).argmax(1)

    full_cfg = tiny_config(tiny_digits_teacher, tmp_path / "a", data__unconditional=True, warmup__ode_pairs=40)
    teacher = unconditional(load_teacher_for(full_cfg.teacher, 1.0, cpu), cpu)
    z0, _, x0 = ode_pairs(teacher, full_cfg.warmup, 0, cpu, None, batch_size=16)
    read = classes(x0)
    drop = sorted(set(read.mode().values.view(1).tolist()) | {int(read[0])})  # classes this random teacher makes
    hit = torch.isin(read, torch.tensor(drop))
    cfg = tiny_config(tiny_digits_teacher, tmp_path / "b", data__unconditional=True, warmup__ode_pairs=40,
                      warmup__drop_classes=drop, warmup__drop_mode="replace")
    z, c, x = ode_pairs(teacher, cfg.warmup, 0, cpu, None, batch_size=16)
    assert len(z) == 40 and (c == teacher.denoiser.num_classes).all()
    assert hit.any() and not torch.isin(classes(x), torch.tensor(drop)).any()
    torch.testing.assert_close(x[~hit], x0[~hit])  # targets of kept classes are untouched, with their noise
    torch.testing.assert_close(z[~hit], z0[~hit])
    same_noise = (z == z0).flatten(1).all(1) & hit  # redrawn from their own noise (this random teacher barely
    assert same_noise.any()                          # reads its label, so a few need a fresh pair instead)
    assert ((x - x0).flatten(1).abs().amax(1)[same_noise] > 0.01).all()


FSDP_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from fdistill.training.config import build
from fdistill.training.distill import DistillConfig, distill
from fdistill.training.distributed import end_process_group
cfg = {cfg!r}
distill(build(DistillConfig, cfg))                                                 # uninterrupted, 4 steps
distill(build(DistillConfig, {{**cfg, "steps": 1, "output_dir": cfg["output_dir"] + "_cut"}}))  # "killed" at 3
distill(build(DistillConfig, {{**cfg, "output_dir": cfg["output_dir"] + "_cut"}}), resume="latest")
distill(build(DistillConfig, {{**cfg, **{rkl!r}, "output_dir": cfg["output_dir"] + "_rkl"}}))
end_process_group()
"""


def test_fsdp_on_two_cpu_processes_matches_one_process_and_resumes_bit_exactly(tiny_digits_teacher, tmp_path):
    """parallel=fsdp (torch's fully_shard on a gloo CPU mesh): sharded checkpoints, a bit-exact resume (JS, with
    the discriminator head), and the student one process trains on the whole batch.

    The comparison with one process is made without the discriminator (reverse-KL, no GAN term), and its
    tolerance is Adam's: early in training the gradients here are differences of nearly equal quantities (the
    head's real and fake means, the fake score's and the teacher's x̂0), so the reduce-scatter's other order of
    summation flips the sign of some near-zero entries, and Adam with β1 = 0 turns each flip into a step of
    about ±lr. Over the 2 generator steps that bounds the difference by 2 · 2 · lr_generator.
    """
    rkl = {"objective": {"divergence": "reverse_kl", "gan_weight": 0.0}}
    cfg = {"teacher": {"path": str(tiny_digits_teacher)}, "objective": {"divergence": "js"},
           "warmup": {"steps": 1, "ode_pairs": 8, "ode_steps": 2, "batch_size": 4}, "critic_warmup_steps": 1,
           "steps": 2, "batch_size": 4, "critic_steps": 2, "checkpoint_every": 1, "log_every": 1,
           "checkpoints_to_keep": 10, "output_dir": str(tmp_path / "fsdp"), "parallel": "fsdp"}
    script = tmp_path / "fsdp_run.py"
    script.write_text(FSDP_SCRIPT.format(tests=str(ROOT / "tests"), cfg=cfg, rkl=rkl))
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                          str(script)], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         timeout=900)
    assert res.returncode == 0, res.stdout[-1000:] + res.stderr[-3000:]
    shards = sorted(p.name for p in (tmp_path / "fsdp" / "checkpoint-4" / "sharded").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # each rank wrote its own shards
    assert not (tmp_path / "fsdp" / "checkpoint-4" / "student.safetensors").exists()

    def unet(run):
        return load_file(str(run / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"))

    full, resumed = unet(tmp_path / "fsdp"), unet(tmp_path / "fsdp_cut")
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=0, atol=0, msg=k)
    one = distill(build(DistillConfig, {**cfg, **rkl, "parallel": "ddp", "output_dir": str(tmp_path / "one")}))
    fsdp, atol = unet(tmp_path / "fsdp_rkl"), 2 * 2 * one_config_lr(cfg)
    for k, v in unet(one).items():  # the exported EMA student; to_k biases: see the DDP test
        if not k.endswith("to_k.bias"):
            torch.testing.assert_close(fsdp[k], v, rtol=0, atol=atol, msg=k)


def one_config_lr(cfg: dict) -> float:
    return build(DistillConfig, cfg).optim.lr_generator


def test_fsdp_needs_several_processes(tiny_digits_teacher, tmp_path):
    with pytest.raises(ValueError, match="parallel=fsdp needs several processes: launch with torchrun"):
        distill(tiny_config(tiny_digits_teacher, tmp_path, steps=1, parallel="fsdp"))


DEAD_RANK_SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
import torch.distributed as dist
from fdistill.objective import FDistillObjective
from fdistill.training.config import build
from fdistill.training.distill import DistillConfig, distill
original = FDistillObjective.generator_loss

def dies_on_rank_1(self, *args):
    if dist.get_rank() == 1:
        os._exit(3)  # a rank lost mid-training (killed, out of memory, machine gone)
    return original(self, *args)

FDistillObjective.generator_loss = dies_on_rank_1
distill(build(DistillConfig, {cfg!r}))
"""


def test_a_dead_rank_ends_the_job_naming_it(tiny_digits_teacher, tmp_path):
    import time

    cfg = {"teacher": {"path": str(tiny_digits_teacher)}, "objective": {"divergence": "js"},
           "warmup": {"steps": 1, "ode_pairs": 8, "ode_steps": 2, "batch_size": 4}, "steps": 3, "batch_size": 4,
           "critic_steps": 1, "checkpoint_every": 10, "output_dir": str(tmp_path / "run"), "dist_timeout_s": 60}
    script = tmp_path / "dead.py"
    script.write_text(DEAD_RANK_SCRIPT.format(tests=str(ROOT / "tests"), cfg=cfg))
    tic = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                          str(script)], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         timeout=600)
    assert res.returncode != 0 and time.monotonic() - tic < 300  # ended, not hung
    assert "rank      : 1" in res.stderr and "exitcode  : 3" in res.stderr, res.stderr[-3000:]
