"""The HiAR student method (training/hiar.py) on a tiny random moving-digits-shaped teacher."""

import json
from pathlib import Path

import pytest
import torch
from hiar_common import TINY_1CH, build_config

from fdistill.models.causal_wan import CausalWanTransformer3DModel
from fdistill.training.config import ConfigError
from fdistill.training.hiar import HiARConfig, HiARStudent, distill_video, regulariser_target, self_rollout

TINY_WAN = TINY_1CH


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A random tiny bidirectional Wan teacher in the layout ``fdistill train-teacher`` writes."""
    from diffusers import WanTransformer3DModel
    from safetensors.torch import save_file

    from fdistill.teachers import LabelEmbedding

    out = tmp_path_factory.mktemp("video_teacher")
    torch.manual_seed(0)
    WanTransformer3DModel(**TINY_WAN).save_pretrained(out / "model", safe_serialization=True)
    emb = LabelEmbedding(10, TINY_WAN["text_dim"])
    save_file({k: v.contiguous() for k, v in emb.state_dict().items()}, str(out / "label_embedding.safetensors"))
    (out / "teacher.json").write_text(json.dumps({
        "model_class": "WanTransformer3DModel", "schedule": {"name": "flow", "kwargs": {"shift": 2.0}},
        "num_classes": 10, "null_label": 10, "label_embedding": emb.config(),
        "data": {"name": "moving_digits", "kwargs": {"num_frames": 4, "size": 8}}}))
    return out


def tiny_config(teacher_dir: Path, out: Path, **kw) -> HiARConfig:
    return build_config(HiARConfig, {
        "teacher": {"path": str(teacher_dir)}, "output_dir": str(out), "batch_size": 2, "steps": 2, "critic_steps": 1,
        "log_every": 1, "checkpoint_every": 2, "progress": False, "ema_decay": 0.5,
        "clip": {"num_frames": 4, "frames_per_block": 2, "denoising_steps": [1000, 500]},
        "trajectories": {"count": 4, "steps_per_interval": 2, "batch_size": 4, "cache_dir": str(out.parent / "traj")},
        "warmup": {"steps": 2, "batch_size": 2},
        "optim": {"lr_generator": 1e-3, "lr_critic": 1e-3},
        "discriminator": {"feature_modules": ["blocks.1"], "hidden": 8},
    }, **kw)


@pytest.mark.parametrize("order", ["hierarchical", "sequential"])
@pytest.mark.parametrize("context", ["next", "same"])
def test_gradients_reach_only_exit_step_forwards(order, context):
    from fdistill.models.hiar_cell import HiARPlan
    from fdistill.schedules import FlowMatchingSchedule

    torch.manual_seed(0)
    model = CausalWanTransformer3DModel(**TINY_WAN)
    schedule = FlowMatchingSchedule(shift=2.0)
    plan = HiARPlan((1.0, 0.8, 0.5, 0.0), num_blocks=3, frames_per_block=2, context=context)
    calls = []
    # every model call (plain or batched cache forward) embeds its patches once: count those, with grad or not
    model.patch_embedding.register_forward_hook(lambda m, a, out: calls.append(torch.is_grad_enabled()))
    caches = []
    original = model.make_kv_cache
    model.make_kv_cache = lambda window=None, sink=0: caches.append(original(window, sink)) or caches[-1]
    eps = torch.randn(1, 4, 1, 6, 8, 8)
    x0 = self_rollout(model, schedule, plan, torch.randn(1, 1, 16), eps, order, exit_step=1)
    assert x0.shape == (1, 1, 6, 8, 8) and x0.requires_grad
    assert sum(calls) == plan.num_blocks  # one forward with grad per block: the exit step's
    assert len(calls) > plan.num_blocks  # the steps before it and the cache writes ran without
    for cache in caches:
        assert all(not t.requires_grad for t in (*cache.keys, *cache.values) if t is not None)
    x0.sum().backward()
    assert model.patch_embedding.weight.grad is not None


def test_regulariser_target_is_teacher_first_step_x0(teacher_dir, tmp_path):
    method = HiARStudent(tiny_config(teacher_dir, tmp_path / "run"), torch.device("cpu"))
    method.start(0, tmp_path / "run", True)
    d = method.data
    # oracle: the guided teacher's x̂0 at the trajectory's pure noise, t = 1, computed directly
    teacher = method.teacher
    with torch.no_grad():
        oracle = teacher(d["states"][:, 0], torch.ones(4), teacher.label_embedding(d["labels"]),
                         guidance_scale=method.config.trajectories.guidance_scale)
    torch.testing.assert_close(d["target"], oracle, rtol=1e-4, atol=1e-4)
    assert float(d["times"][0]) == 1.0 and 0 < float(d["first_t"][0]) < 1
    # the formula itself, on numbers: x_in − t_in (x_tgt − x_in)/(t_tgt − t_in)
    assert regulariser_target(torch.tensor(2.0), torch.tensor(1.0), 1.0, 0.75).item() == pytest.approx(-2.0)


def test_trajectories_are_cached_by_settings(teacher_dir, tmp_path):
    from fdistill.training.cache import cache_path

    cfg = tiny_config(teacher_dir, tmp_path / "run")
    a = HiARStudent(cfg, torch.device("cpu"))
    first = a.load_trajectories(write=True)
    path = cache_path(cfg.trajectories.cache_dir, "trajectories", a.trajectory_settings())
    assert path.is_file()
    again = HiARStudent(cfg, torch.device("cpu")).load_trajectories(write=False)
    assert torch.equal(first["states"], again["states"])
    other = HiARStudent(tiny_config(teacher_dir, tmp_path / "run", **{"trajectories.guidance_scale": 3.0}),
                        torch.device("cpu"))
    assert cache_path(cfg.trajectories.cache_dir, "trajectories", other.trajectory_settings()) != path


@pytest.mark.parametrize("divergence", ["reverse_kl", "jensen_shannon"])
def test_trains_each_stage_and_resumes_bit_exactly(teacher_dir, tmp_path, divergence):
    from safetensors.torch import load_file

    kw = {"objective.divergence": divergence, "objective.gan_weight": 0.0}
    full = distill_video(tiny_config(teacher_dir, tmp_path / "full", **kw))
    records = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == ["warmup", "warmup", "distill", "distill"]
    assert "ode_mse" in records[0] and "fake_score" in records[2]
    assert any(k in records[2] for k in ("dm", "reg_mse"))

    a = load_file(full / "hiar_student.safetensors")
    # interrupted after the init stage (checkpoint 2) and inside the DM stage (checkpoint 3: Adam and
    # ratio-normaliser states of critic and generator must come back too)
    for stop in (0, 1):
        part = tmp_path / f"part{stop}"
        distill_video(tiny_config(teacher_dir, part, steps=stop, **kw))
        resumed = distill_video(tiny_config(teacher_dir, part, **kw), resume="latest")
        b = load_file(resumed / "hiar_student.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)  # same draws, same order: bit-identical


def test_load_hiar_student_generates_with_no_arguments(teacher_dir, tmp_path):
    from fdistill.pipelines import load_hiar_student

    out = distill_video(tiny_config(teacher_dir, tmp_path / "run", steps=1, **{"warmup.steps": 0}))
    pipe = load_hiar_student(out / "hiar_student.safetensors")
    pipe.set_progress_bar_config(disable=True)
    frames = pipe().frames
    assert frames.shape == (1, 4, 8, 8, 3)
    assert pipe.config.denoising_steps == [1000, 500] and pipe.config.frames_per_block == 2


def test_window_and_sink_train_and_ship_as_defaults(teacher_dir, tmp_path):
    """Self-rollouts past the window with an attention sink (active: 8 frames, window 6, sink 2) train and the
    student's pipeline carries both as its defaults."""
    from fdistill.pipelines import load_hiar_student

    out = distill_video(tiny_config(teacher_dir, tmp_path / "run", steps=1, **{
        "warmup.steps": 0, "clip.num_frames": 8, "clip.window": 6, "clip.sink_frames": 2}))
    pipe = load_hiar_student(out / "hiar_student.safetensors")
    assert (pipe.config.window, pipe.config.sink_frames) == (6, 2)
    pipe.set_progress_bar_config(disable=True)
    assert pipe(labels=[3], output_type="latent").frames.shape[2] == 8


def test_missing_student_names_the_command(tmp_path):
    from fdistill.pipelines import load_hiar_student

    with pytest.raises(FileNotFoundError, match="fdistill distill-video --config configs/moving_digits_hiar.yaml"):
        load_hiar_student(tmp_path / "absent.safetensors")


@pytest.mark.parametrize(("key", "value", "named"), [
    ("order", "wavefront", "wavefront"),
    ("regulariser.attention", "causal", "causal"),
    ("clip.num_frames", 5, "5"),
    ("clip.denoising_steps", [500, 1000], "[500, 1000]"),
    ("clip.sink_frames", 3, "clip.sink_frames=3"),
    ("objective.divergence", "nope", "nope"),
    ("dm_time.kind", "lognormal", "lognormal"),
])
def test_config_errors_name_the_bad_value(teacher_dir, tmp_path, key, value, named):
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        tiny_config(teacher_dir, tmp_path, **{key: value})


def test_demo_config_loads():
    from fdistill.training.config import load_config

    cfg = load_config(HiARConfig, Path(__file__).parents[1] / "configs" / "moving_digits_hiar.yaml")
    assert cfg.order == "hierarchical" and cfg.regulariser.weight == 0.1 and cfg.clip.num_frames == 12


def test_default_student_absent_names_the_command(monkeypatch, tmp_path):
    import fdistill.pipelines.hiar_student as hs

    monkeypatch.setattr(hs, "HIAR_STUDENT", tmp_path / "hiar_student.safetensors")
    with pytest.raises(FileNotFoundError, match="fdistill distill-video"):
        hs.load_hiar_student()


def test_cli_has_distill_video():
    from fdistill.cli import build_parser

    args = build_parser().parse_args(["distill-video", "--config", "c.yaml", "steps=3", "--resume", "latest"])
    assert args.config == "c.yaml" and args.overrides == ["steps=3"] and args.resume == "latest"


def test_sequential_order_with_block_causal_regulariser_trains(teacher_dir, tmp_path):
    cfg = tiny_config(teacher_dir, tmp_path / "run", order="sequential", steps=3, export=False,
                      **{"warmup.steps": 0, "regulariser.attention": "block_causal"})
    out = distill_video(cfg)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["phase"] == "distill" for r in records)
    assert not (out / "hiar_student.safetensors").exists()


def test_uniform_dm_times_follow_the_reference(teacher_dir, tmp_path):
    from fdistill.training.trainer import Draw

    method = HiARStudent(tiny_config(teacher_dir, tmp_path / "run", **{"dm_time.kind": "uniform"}),
                         torch.device("cpu"))
    draw = Draw(torch.Generator().manual_seed(0), 4096, 0, 1, torch.device("cpu"))
    t, eps = method._noise(draw)
    assert t.shape == (4096,) and eps.shape == (4096, 1, 4, 8, 8)
    assert t.min() >= 0.02 and t.max() <= 0.98
    u = torch.rand(4096, generator=torch.Generator().manual_seed(0))  # the same first draw, warped by shift 5
    torch.testing.assert_close(t, (5 * u / (1 + 4 * u)).clamp(0.02, 0.98))


@pytest.mark.parametrize(("override", "message"), [
    ("init.steps=5", "renamed setting: init.steps → warmup.steps"),
    ("teacher_path=x", "renamed setting: teacher_path → teacher.path"),
])
def test_renamed_keys_name_their_new_name(override, message):
    from fdistill.training.config import load_config

    config = Path(__file__).resolve().parents[1] / "configs" / "moving_digits_hiar.yaml"
    with pytest.raises(ConfigError, match=message):
        load_config(HiARConfig, config, [override])
