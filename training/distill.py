"""``fdistill distill``: a one-step student from a diffusion teacher by f-divergence distribution matching.

Phases, one global step counter:
1. ``warmup.steps`` steps of regression on teacher probability-flow-ODE pairs (z → teacher sample),
   the DMD/CausVid initialisation (0 to skip).
2. ``critic_warmup_steps`` steps of critic updates only (the discriminator leaves chance first).
3. ``steps`` f-distill iterations: ``critic_steps`` updates of the fake score + discriminator head,
   then one generator update (:class:`~fdistill.objective.FDistillObjective`).

The loop is :func:`fdistill.training.trainer.train` (accelerate: one process, DDP or FSDP); this
file is the method. The ratio normaliser and the h normalisation all-reduce their statistics, so
every rank weights samples as one process would with the whole batch.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fdistill.denoisers import Denoiser
from fdistill.lora import add_lora, lora_state_dict, merged_copy, shared_copy
from fdistill.models.discriminator import FeatureDiscriminator
from fdistill.schedules import NoiseSchedule

from .config import load_config
from .distill_config import DistillConfig
from .matching import DistributionMatching, NetworkSpec
from .sources import RealData, RealStream, Teacher, load_teacher_for, ode_pairs, unconditional
from .trainer import Draw, train, trainable

__all__ = ["ODE_PAIRS_FILE", "DistillConfig", "FDistill", "OneStepGenerator", "distill", "distill_from_cli",
           "export_student"]

ODE_PAIRS_FILE = "ode_pairs.safetensors"  # the warm-up's teacher pairs, cached in the output dir


class OneStepGenerator(nn.Module):
    """G(z, c) = x̂0(x_T, t_gen, c) of a network initialised from the teacher.

    x_T = ``input_scale``·z when given (what the exported stock pipeline feeds its denoiser at one step),
    else the schedule's prior at t_gen.
    """

    def __init__(self, denoiser: Denoiser, t_gen: float, input_scale: float | None = None):
        super().__init__()
        self.denoiser, self.t_gen, self.input_scale = denoiser, t_gen, input_scale

    def forward(self, z: Tensor, condition: Tensor | None = None) -> Tensor:
        s = self.denoiser.schedule
        t = torch.full((z.shape[0],), self.t_gen, device=z.device)
        x_T = s.prior(z) if self.input_scale is None else self.input_scale * z
        return self.denoiser(x_T, t, condition, guidance_scale=1.0)


class FDistill(DistributionMatching):
    """f-distill (Xu, Nie, Vahdat 2025) on the shared loop.

    Per step: ``critic_steps`` critic updates — the fake score learns the student's distribution
    (denoising on sg(G(z))) and the discriminator head learns real vs student at noise level t —
    then one generator update with the objective's L_G, whose distribution-matching gradient is
    weighted per sample by h(r) of the divergence (reverse-KL: h ≡ 1, DMD/DMD2). Before them, an
    optional ODE warm-up (regression on teacher pairs) and a critic warm-up (critic updates only).
    """

    def __init__(self, config: DistillConfig, device: torch.device, rank: int = 0, world: int = 1):
        self.config = c = config
        obj_cfg = c.objective
        teacher = load_teacher_for(c.teacher, obj_cfg.guidance_scale, device, c.data,
                                   c.discriminator.feature_modules)
        self.teacher = teacher = unconditional(teacher, device) if c.data.unconditional else teacher
        self.schedule = teacher.denoiser.schedule
        den_t = teacher.denoiser
        tap_fake = c.discriminator.feature_source == "fake"
        t_gen = self.schedule.t_max if teacher.student_t is None else teacher.student_t
        student = OneStepGenerator(Denoiser(self.trained_copy(c.student), self.schedule, den_t.condition_key), t_gen,
                                   teacher.student_scale).to(device)
        fake = Denoiser(self.trained_copy(c.fake_score), self.schedule, den_t.condition_key,
                        feature_modules=den_t.feature_modules if tap_fake else ()).to(device)
        disc = None
        if obj_cfg.needs_discriminator:
            probe_g = torch.Generator().manual_seed(c.seed)
            probe = torch.randn(2, *teacher.sample_shape, generator=probe_g).to(device)
            disc = FeatureDiscriminator.build(
                fake if tap_fake else den_t, probe, torch.full((2,), self.schedule.t_max, device=device),
                teacher.conditions(2, probe_g), hidden=c.discriminator.hidden, kind=c.discriminator.head).to(device)
        self.optimizers = {"warmup": torch.optim.Adam(student.parameters(), lr=c.warmup.lr),
                           **self.build_critic(student, fake, disc, c.optim)}
        self.score_teacher, self.features_from = den_t, c.discriminator.feature_source
        self.ema = {"ema": "student"}
        self.real = None
        if self.disc is not None:
            self.real = (RealStream(c.data, teacher, device, rank, world) if c.data.name == "webdataset"
                         else RealData(c.data, c.seed, c.batch_size, teacher, device))
        self.device = device
        self.phases = self.matching_phases(c.warmup.steps, c.warmup.batch_size, c.critic_warmup_steps, c.steps,
                                           c.critic_steps, c.batch_size)

    def trained_copy(self, spec: NetworkSpec) -> nn.Module:
        """The teacher's network as a trained student or fake score: a full copy, or a LoRA view of its weights."""
        teacher = self.teacher.denoiser.model
        if spec.lora_rank is None:
            net = copy.deepcopy(teacher).requires_grad_(True)
        else:
            net = shared_copy(teacher)
            add_lora(denoiser_of(net), spec.lora_rank, spec.lora_alpha)
        if self.config.gradient_checkpointing:
            denoiser_of(net).enable_gradient_checkpointing()
        return net.train()

    def prepared(self) -> None:
        super().prepared()
        if isinstance(self.real, RealStream):
            self.states["real_stream"] = self.real  # how far each rank has read its shards

    def start(self, step: int, output_dir: Path, is_main: bool) -> None:
        if step < self.config.warmup.steps:
            self.pairs = ode_pairs(self.teacher, self.config.warmup, self.config.seed, self.device,
                                   output_dir / ODE_PAIRS_FILE if is_main else None)

    def _latents(self, draw: Draw) -> tuple[Tensor, Tensor]:
        c = draw(self.teacher.conditions)
        return draw.randn(*self.teacher.sample_shape), c

    def _noise(self, draw: Draw) -> tuple[Tensor, Tensor]:
        return draw(lambda n, g: self.objective.noise(n, self.teacher.sample_shape, g))

    def critic_loss(self, draw: Draw) -> tuple[Tensor, dict[str, Tensor]]:
        z, c = self._latents(draw)
        with torch.no_grad():
            x0 = self.modules["student"](z, c)
        t, eps = self._noise(draw)
        if self.real is None:
            return self.objective.critic_loss(x0, c, t, eps)
        x_real, c_real = self.real.sample(draw)
        t_real, eps_real = self._noise(draw)
        return self.objective.critic_loss(x0, c, t, eps, x_real, c_real, t_real, eps_real)

    def generator_loss(self, draw: Draw) -> tuple[Tensor, dict[str, Tensor]]:
        z, c = self._latents(draw)
        t, eps = self._noise(draw)
        return self.objective.generator_loss(self.modules["student"](z, c), c, t, eps)

    def finish(self, output_dir: Path, ema: dict[str, Any]) -> None:
        if self.config.export:
            export_student(self.modules["student"], ema["ema"], self.schedule, self.teacher, output_dir / "pipeline",
                           lora_path=output_dir / "lora" if self.config.student.lora_rank is not None else None)


def distill(config: DistillConfig, resume: str | bool | None = None) -> Path:
    """Run f-distill; returns ``output_dir`` (with ``pipeline/`` when ``export``).

    ``batch_size`` and ``warmup.batch_size`` are global batches, split over processes and
    ``gradient_accumulation_steps`` micro-batches.
    """
    return train(config, lambda accelerator: FDistill(config, accelerator.device, accelerator.process_index,
                                                      accelerator.num_processes), resume, config.optim.grad_clip,
                 "f-distill").output_dir


def denoiser_of(net: nn.Module) -> nn.Module:
    """The diffusers model inside a trained network (a family's :class:`~fdistill.families.FamilyNet` wraps it)."""
    return getattr(net, "feature_root", net)


def export_student(student: nn.Module, ema, schedule: NoiseSchedule, teacher: Teacher, path: Path,
                   lora_path: Path | None = None):
    """Save the EMA student: a pipeline teacher's own pipeline class and layout (the stock one-step call
    runs it), or an :class:`~fdistill.pipelines.FDistillPipeline` folder for fdistill's own asset teachers.

    A LoRA student is merged into a full copy of the teacher's weights for that folder; with ``lora_path`` its
    adapter is also written there for ``pipe.load_lora_weights`` on the teacher's own pipeline (families
    whose pipeline loads LoRA).
    """
    from accelerate.utils import extract_model_from_parallel

    from fdistill.pipelines import export_pipeline

    student = extract_model_from_parallel(student)
    net = copy.deepcopy(student.denoiser.model).cpu()
    ema.copy_to(trainable(net))
    model = denoiser_of(net)
    lora = lora_state_dict(model) if lora_path is not None else None
    if lora is not None:
        model = merged_copy(denoiser_of(teacher.denoiser.model), model).cpu()  # a copy: the teacher stays put
    family = teacher.components.get("family")
    if family is None:
        return export_pipeline(model.eval(), schedule, path, vae=teacher.components.get("vae"), student_t=student.t_gen)
    family.export(model.eval(), path)
    if lora is not None and family.lora_loadable:
        family.export_lora(lora, lora_path)
    return path


def distill_from_cli(config_path: str | None, overrides: list[str], resume: str | None = None) -> Path:
    """Entry point of ``fdistill distill``."""
    return distill(load_config(DistillConfig, config_path, overrides), resume=resume)
