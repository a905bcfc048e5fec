"""``fdistill distill``: a one-step student from a diffusion teacher by f-divergence distribution matching.

Phases, one global step counter:
1. ``warmup.steps`` steps of regression on teacher probability-flow-ODE pairs (z → teacher sample),
   the DMD/CausVid initialisation (0 to skip).
2. ``steps`` f-distill iterations: ``critic_steps`` updates of the fake score + discriminator head,
   then one generator update (:class:`~fdistill.objective.FDistillObjective`).

Multi-process runs (``accelerate launch`` / ``torchrun``) average gradients by an explicit
all-reduce instead of DDP wrappers: the critic uses the fake network in two roles and R1 needs a
double backward, neither of which DDP supports. The ratio normaliser and the h normalisation
all-reduce their statistics, so every rank weights samples identically.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from fdistill.denoisers import Denoiser
from fdistill.models.discriminator import FeatureDiscriminator
from fdistill.objective import FDistillObjective
from fdistill.schedules import NoiseSchedule

from .checkpoint import load_checkpoint, resolve_resume, save_checkpoint, truncate_metrics
from .config import load_config, save_config
from .distill_config import DataSpec, DistillConfig, OptimSpec, TeacherSpec, WarmupSpec
from .distributed import assert_replicas_agree, make_accelerator, sync_gradients
from .sources import RealData, Teacher, load_teacher_for, ode_pairs

__all__ = ["DataSpec", "DistillConfig", "OneStepGenerator", "OptimSpec", "TeacherSpec", "WarmupSpec", "distill",
           "distill_from_cli", "export_student"]


class OneStepGenerator(nn.Module):
    """G(z, c) = x̂0(prior(z), t_gen, c) of a network initialised from the teacher."""

    def __init__(self, denoiser: Denoiser, t_gen: float):
        super().__init__()
        self.denoiser, self.t_gen = denoiser, t_gen

    def forward(self, z: Tensor, condition: Tensor | None = None) -> Tensor:
        s = self.denoiser.schedule
        t = torch.full((z.shape[0],), self.t_gen, device=z.device)
        return self.denoiser(s.prior(z), t, condition, guidance_scale=1.0)


def _generator(seed: int, step: int, micro: int, rank: int, stream: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(((((seed * 1_000_003 + step) * 1_009 + micro) * 101 + rank) * 7) + stream)



def _check_finite(loss: Tensor, what: str, step: int, logs: dict, out: Path) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite {what} loss at step {step} ({logs}); the checkpoints in {out} "
                                 "are intact: lower the learning rates and --resume")


def _tensorboard_writer(path: Path):
    """A SummaryWriter when the ``tensorboard`` extra is installed, else None (JSONL is always written)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(path))


def _mean_logs(window: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for w in window for k in w}
    return {k: sum(w[k] for w in window if k in w) / sum(k in w for w in window) for k in sorted(keys)}


def distill(config: DistillConfig, resume: str | bool | None = None) -> Path:
    """Run f-distill; returns ``output_dir`` (with ``pipeline/`` when ``export``)."""
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    out = Path(config.output_dir)
    accelerator = make_accelerator(config.mixed_precision)
    device, rank = accelerator.device, accelerator.process_index

    obj_cfg = config.objective
    teacher = load_teacher_for(config.teacher, obj_cfg.guidance_scale, device, config.data.prompts)
    schedule: NoiseSchedule = teacher.denoiser.schedule
    den_t = teacher.denoiser

    torch.manual_seed(config.seed)
    student = OneStepGenerator(Denoiser(copy.deepcopy(den_t.model).requires_grad_(True).train(), schedule,
                                        den_t.condition_key), schedule.t_max)
    fake = Denoiser(copy.deepcopy(den_t.model).requires_grad_(True).train(), schedule, den_t.condition_key,
                    feature_modules=config.teacher.feature_modules if config.teacher.feature_source == "fake" else ())
    disc = None
    if obj_cfg.needs_discriminator:
        probe_g = torch.Generator().manual_seed(config.seed)
        probe = torch.randn(2, *teacher.sample_shape, generator=probe_g).to(device)
        trunk = den_t if config.teacher.feature_source == "teacher" else fake
        disc = FeatureDiscriminator.build(trunk, probe, torch.full((2,), schedule.t_max, device=device),
                                          teacher.conditions(2, probe_g), hidden=config.disc_hidden).to(device)
    objective = FDistillObjective(schedule, den_t, fake, disc, obj_cfg).to(device)
    student.to(device)

    critic_params = list(fake.parameters()) + (list(disc.head.parameters()) if disc is not None else [])
    betas = (config.optim.beta1, config.optim.beta2)
    opt_g = torch.optim.Adam(student.parameters(), lr=config.optim.lr_generator, betas=betas)
    opt_c = torch.optim.Adam(critic_params, lr=config.optim.lr_critic, betas=betas)
    opt_w = torch.optim.Adam(student.parameters(), lr=config.warmup.lr)
    opt_g, opt_c, opt_w = accelerator.prepare(opt_g, opt_c, opt_w)
    ema = EMAModel(student.parameters(), decay=config.ema_decay)
    ema.to(device)
    states = {"student": student, "fake_score": fake, "ratio_normalizer": objective.ratio_normalizer, "ema": ema}
    if disc is not None:
        states["discriminator_head"] = disc.head

    metrics_path = out / "metrics.jsonl"
    start = 0
    ckpt = resolve_resume(resume, out)
    if ckpt is not None:
        start = int(load_checkpoint(accelerator, ckpt, states)["step"])
        ema.to(device)
        if accelerator.is_main_process:
            truncate_metrics(metrics_path, start)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")

    real = RealData(config, teacher, device) if disc is not None else None
    pairs = None
    if start < config.warmup.steps:
        pairs = ode_pairs(teacher, config.warmup, config.seed, device,
                          out / "ode_pairs.safetensors" if accelerator.is_main_process else None)

    accum = config.gradient_accumulation_steps

    def update(opt, params, loss_fn, what: str, step: int, stream: int) -> dict[str, float]:
        logs: dict[str, float] = {}
        # the generator's GAN term back-propagates into the discriminator head: start every update clean
        opt.zero_grad(set_to_none=True)
        for micro in range(accum):
            g = _generator(config.seed, step, micro, rank, stream)
            with accelerator.autocast():
                loss, logs = loss_fn(g)
            _check_finite(loss, what, step, logs, out)
            accelerator.backward(loss / accum)
        sync_gradients(params)
        if config.optim.grad_clip > 0:
            accelerator.clip_grad_norm_(params, config.optim.grad_clip)
        opt.step()
        return logs

    def draw(g: torch.Generator, batch: int) -> tuple[Tensor, Tensor]:
        c = teacher.conditions(batch, g)
        return torch.randn(batch, *teacher.sample_shape, generator=g).to(device), c

    def warmup_loss(g):
        i = torch.randint(pairs[0].shape[0], (config.warmup.batch_size,), generator=g).to(device)
        loss = (student(pairs[0][i], pairs[1][i]).float() - pairs[2][i]).pow(2).mean()
        return loss, {"ode_mse": loss.item()}

    def critic_loss(g):
        z, c = draw(g, config.batch_size)
        with torch.no_grad():
            x0 = student(z, c)
        x_real, c_real = real(config.batch_size, g) if real is not None else (None, None)
        return objective.critic_loss(x0, x_real, c, c_real, generator=g)

    def generator_loss(g):
        z, c = draw(g, config.batch_size)
        return objective.generator_loss(student(z, c), c, generator=g)

    tensorboard = _tensorboard_writer(out / "tensorboard") if accelerator.is_main_process else None
    bar = tqdm(range(start, config.total_steps), initial=start, total=config.total_steps, desc="f-distill",
               disable=not accelerator.is_local_main_process)
    tic, window = time.perf_counter(), []
    student_params = list(student.parameters())
    for step in bar:
        if step < config.warmup.steps:
            logs = update(opt_w, student_params, warmup_loss, "ODE warm-up", step, 0)
        else:
            logs = {}
            for k in range(config.critic_steps):
                logs.update(update(opt_c, critic_params, critic_loss, "critic", step, 1 + k))
            logs.update(update(opt_g, student_params, generator_loss, "generator", step, 0))
        ema.step(student_params)
        window.append(logs)
        bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if k in ("dm", "disc", "fake_score", "ode_mse")})
        done = step + 1
        if done % config.log_every == 0 or done == config.total_steps:
            record = {"step": done, "phase": "warmup" if step < config.warmup.steps else "distill",
                      **_mean_logs(window),
                      "sec_per_step": (time.perf_counter() - tic) / len(window)}
            tic, window = time.perf_counter(), []
            if accelerator.is_main_process:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                if tensorboard is not None:
                    for k, v in record.items():
                        if isinstance(v, float):
                            tensorboard.add_scalar(k, v, done)
        if done % config.checkpoint_every == 0 or done == config.total_steps:
            assert_replicas_agree(student_params, "student weights")
            save_checkpoint(accelerator, out, done, {}, keep=config.checkpoints_to_keep, modules=states)
    bar.close()
    if tensorboard is not None:
        tensorboard.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process and config.export:
        export_student(student, ema, schedule, teacher, out / "pipeline")
    accelerator.wait_for_everyone()
    return out


def export_student(student: OneStepGenerator, ema, schedule: NoiseSchedule, teacher: Teacher, path: Path):
    """Save the EMA student as an :class:`~fdistill.pipelines.FDistillPipeline` folder."""
    from fdistill.pipelines import export_pipeline

    unet = copy.deepcopy(student.denoiser.model).cpu()
    ema.copy_to(unet.parameters())
    comps = teacher.components
    return export_pipeline(unet.eval(), schedule, path, vae=comps.get("vae"), text_encoder=comps.get("text_encoder"),
                           tokenizer=comps.get("tokenizer"), student_t=student.t_gen)


def distill_from_cli(config_path: str | None, overrides: list[str], resume: str | None = None) -> Path:
    """Entry point of ``fdistill distill``."""
    return distill(load_config(DistillConfig, config_path, overrides), resume=resume)
