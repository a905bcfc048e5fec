"""The discriminator's options (issue 10 §2), each on a tiny model."""

import json
import math

import pytest
import torch
from hiar_common import build_config
from safetensors.torch import load_file
from torch import nn

from fdistill.denoisers import Denoiser
from fdistill.density_ratio import RatioNormalizer
from fdistill.models.discriminator import FeatureHead
from fdistill.objective import FDistillObjective, ObjectiveConfig
from fdistill.schedules import EDMSchedule
from fdistill.training.config import ConfigError
from fdistill.training.distill import DistillConfig, FDistill, distill


def tiny(teacher, out, **kw) -> DistillConfig:
    return build_config(DistillConfig, {
        "teacher": {"path": str(teacher)}, "discriminator": {"feature_modules": ["down_blocks.0", "mid_block"]},
        "warmup": {"steps": 1, "ode_pairs": 8, "ode_steps": 2, "batch_size": 4},
        "steps": 1, "batch_size": 4, "critic_steps": 1, "checkpoint_every": 1, "log_every": 1,
        "checkpoints_to_keep": 10, "output_dir": str(out), "export": False, "objective": {"divergence": "js"}}, **kw)


def test_updates_per_step_follow_the_phases(tiny_digits_teacher, tmp_path):
    method = FDistill(tiny(tiny_digits_teacher, tmp_path, critic_steps=4, critic_warmup_steps=2), torch.device("cpu"))
    names = [[u.name for u in method.updates(s)] for s in range(4)]
    assert names == [["ode_warmup"], ["critic"] * 4, ["critic"] * 4, ["critic"] * 4 + ["generator"]]
    assert [method.phase(s) for s in range(4)] == ["warmup", "critic_warmup", "critic_warmup", "distill"]
    lrs = [g["lr"] for g in method.optimizers["critic"].param_groups]
    assert lrs == [method.config.optim.lr_critic, method.config.optim.lr_head]


def test_critic_warmup_trains_the_head_at_its_own_rate_and_leaves_the_student(tiny_digits_teacher, tmp_path):
    out = distill(tiny(tiny_digits_teacher, tmp_path, warmup__steps=0, critic_warmup_steps=2, steps=0,
                       critic_steps=2, optim__lr_critic=0.0, optim__lr_head=1e-2))

    def state(step, name):
        return load_file(str(out / f"checkpoint-{step}" / f"{name}.safetensors"))

    for name, changes in (("student", False), ("fake_score", False), ("discriminator_head", True)):
        a, b = state(1, name), state(2, name)
        assert any(not torch.equal(a[k], b[k]) for k in a) == changes, name
    assert len(state(2, "discriminator_head")) == 2 * 6  # two levels, three conv layers each (weight, bias)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in lines] == ["critic_warmup", "critic_warmup"]
    assert all("disc" in r and "dm" not in r for r in lines)


def test_generator_steps_log_disc_r_mean_and_h_spread(tiny_digits_teacher, tmp_path):
    out = distill(tiny(tiny_digits_teacher, tmp_path, steps=2))
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in lines[1:]:
        assert {"disc", "r_mean", "h_spread", "dm", "fake_score"} <= set(r)
        assert r["h_spread"] >= 0 and r["r_mean"] > 0


def test_conv_head_averages_one_logit_per_level():
    torch.manual_seed(0)
    head = FeatureHead([4, 8], hidden=5, kind="conv")
    feats = [torch.randn(3, 4, 8, 8), torch.randn(3, 8, 4, 4)]
    per_level = [b(f).flatten(1).mean(1) for b, f in zip(head.branches, feats, strict=True)]
    torch.testing.assert_close(head(feats), (per_level[0] + per_level[1]) / 2)
    with pytest.raises(ValueError, match="conv head needs"):
        head([torch.randn(3, 4), torch.randn(3, 8)])
    with pytest.raises(ValueError, match="not one of"):
        FeatureHead([4], kind="transformer")


class _Recorder(nn.Module):
    """A discriminator that remembers the times it was called with."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.times: list[torch.Tensor] = []

    def forward(self, x_t, t, condition=None):
        self.times.append(t)
        return self.w * x_t.flatten(1).mean(1)


def _toy_objective(**cfg) -> tuple[FDistillObjective, _Recorder]:
    schedule = EDMSchedule()
    fake = Denoiser(nn.Linear(2, 2), schedule, condition_key=None)
    fake.model.forward = lambda x, t: x  # noqa: ARG005  (a network that ignores time is enough here)
    disc = _Recorder()
    return FDistillObjective(schedule, lambda x, t, c, guidance_scale=1.0: x, fake, disc,
                             ObjectiveConfig(divergence="js", **cfg)), disc


@pytest.mark.parametrize("independent", [True, False])
def test_real_batch_gets_its_own_noise_levels(independent):
    objective, disc = _toy_objective(independent_real_t=independent)
    g = torch.Generator().manual_seed(0)
    t, eps = objective.noise(6, (2,), g)
    t_real, eps_real = objective.noise(6, (2,), g)
    objective.critic_loss(torch.randn(6, 2), None, t, eps, torch.randn(6, 2), None, t_real, eps_real)
    fake_t, real_t = disc.times
    assert torch.equal(fake_t, t)
    assert torch.equal(real_t, t_real if independent else t)


def test_t_shift_moves_training_times_toward_low_sigma():
    base, _ = _toy_objective()
    shifted, _ = _toy_objective(t_shift=-1.0)
    t0, _ = base.noise(4096, (2,), torch.Generator().manual_seed(1))
    t1, _ = shifted.noise(4096, (2,), torch.Generator().manual_seed(1))
    s = base.schedule
    torch.testing.assert_close(t1, (t0 * math.exp(-1)).clamp(s.t_min, s.t_max))
    assert t1.median() < 0.4 * t0.median()


def test_ratio_decay_zero_normalises_by_this_batch_only(tiny_digits_teacher, tmp_path):
    norm = RatioNormalizer(num_bins=1, decay=0.0)
    norm(torch.tensor([1.0, 3.0]), torch.tensor([0.5, 0.5]))
    out = norm(torch.tensor([4.0, 8.0]), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(out, torch.tensor([4.0, 8.0]) / 6.0)
    smooth = RatioNormalizer(num_bins=1, decay=0.5)
    smooth(torch.tensor([1.0, 3.0]), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(smooth(torch.tensor([4.0, 8.0]), torch.tensor([0.5, 0.5])),
                               torch.tensor([4.0, 8.0]) / 4.0)
    assert tiny(tiny_digits_teacher, tmp_path, objective__ratio_decay=0.0).objective.ratio_decay == 0.0
    with pytest.raises(ConfigError, match="ratio_decay must be in"):
        tiny(tiny_digits_teacher, tmp_path, objective__ratio_decay=1.0)
    with pytest.raises(ConfigError, match="discriminator.head 'big' is not one of"):
        tiny(tiny_digits_teacher, tmp_path, discriminator__head="big")


def test_demo_config_taps_levels_of_the_shipped_teacher():
    from pathlib import Path

    from fdistill.teachers import load_digits_teacher
    from fdistill.training.config import load_config

    cfg = load_config(DistillConfig, Path(__file__).parents[1] / "configs" / "digits_js.yaml")
    assert len(cfg.discriminator.feature_modules) == 5 and cfg.discriminator.head == "conv"
    assert cfg.optim.lr_head > cfg.optim.lr_critic and cfg.critic_warmup_steps > 0
    den = load_digits_teacher(feature_modules=cfg.discriminator.feature_modules)  # raises on a name the UNet lacks
    feats = den.features(torch.randn(2, 1, 16, 16), torch.ones(2), torch.tensor([1, 2]))
    assert all(f.ndim == 4 for f in feats)  # maps, as the conv head needs


def test_resume_inside_the_critic_warmup_is_bit_exact(tiny_digits_teacher, tmp_path):
    kw = dict(warmup__steps=1, critic_warmup_steps=2, critic_steps=2, steps=1)
    full = distill(tiny(tiny_digits_teacher, tmp_path / "full", **kw))
    distill(tiny(tiny_digits_teacher, tmp_path / "cut", **{**kw, "critic_warmup_steps": 1, "steps": 0}))
    # the cut run ends inside the critic warm-up by having a shorter one: the resume changes that setting
    resumed = distill(tiny(tiny_digits_teacher, tmp_path / "cut", **kw, resume_changes=True), resume="latest")
    for name in ("student", "fake_score", "discriminator_head", "ema", "ratio_normalizer"):
        a = load_file(str(full / "checkpoint-4" / f"{name}.safetensors"))
        b = load_file(str(resumed / "checkpoint-4" / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
