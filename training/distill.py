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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fdistill.denoisers import Denoiser
from fdistill.divergences import get_divergence
from fdistill.models.discriminator import FeatureDiscriminator
from fdistill.objective import FDistillObjective, ObjectiveConfig
from fdistill.schedules import NoiseSchedule

from .checkpoint import atomic_write_text, load_checkpoint, resolve_resume, save_checkpoint
from .config import load_config, save_config
from .distributed import assert_replicas_agree, sync_gradients

TEACHER_KINDS = ("asset", "pipeline")
DATA_NAMES = ("digits", "teacher_samples")
FEATURE_SOURCES = ("teacher", "fake")
PRECISIONS = ("no", "fp16", "bf16")


@dataclass
class TeacherSpec:
    """Where the teacher comes from: a shipped/trained teacher asset (``asset``, default: the digits
    teacher) or a diffusers pipeline folder with ``unet``/``scheduler`` [``vae``/``text_encoder``/
    ``tokenizer``] (``pipeline``: SD1.5-shaped, loaded from a local path)."""

    kind: str = "asset"
    path: str | None = None
    feature_modules: list[str] = field(default_factory=lambda: ["mid_block"])
    feature_source: str = "teacher"

    def __post_init__(self):
        if self.kind not in TEACHER_KINDS:
            raise ValueError(f"teacher.kind {self.kind!r} is not one of {TEACHER_KINDS}")
        if self.feature_source not in FEATURE_SOURCES:
            raise ValueError(f"teacher.feature_source {self.feature_source!r} is not one of {FEATURE_SOURCES}")
        if self.kind == "pipeline" and not self.path:
            raise ValueError("teacher.kind 'pipeline' needs teacher.path (a local diffusers pipeline folder)")
        if self.path is not None and not Path(self.path).exists():
            raise ValueError(f"teacher.path {self.path!r} does not exist")


@dataclass
class DataSpec:
    """Real samples for the discriminator and conditions for the student.

    ``digits``: the embedded digits (labels 0–9). ``teacher_samples``: a pool of ``num_samples``
    teacher samples (``sample_steps`` reference steps) for teachers without a dataset at hand,
    conditioned on ``prompts`` for text models.
    """

    name: str = "digits"
    num_samples: int = 256
    sample_steps: int = 18
    prompts: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.name not in DATA_NAMES:
            raise ValueError(f"data.name {self.name!r} is not one of {DATA_NAMES}")


@dataclass
class WarmupSpec:
    steps: int = 0
    ode_pairs: int = 2000
    ode_steps: int = 18
    lr: float = 1e-3
    batch_size: int = 128


@dataclass
class OptimSpec:
    lr_generator: float = 1e-5
    lr_critic: float = 1e-5
    beta1: float = 0.0
    beta2: float = 0.999
    grad_clip: float = 10.0


@dataclass
class DistillConfig:
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataSpec = field(default_factory=DataSpec)
    warmup: WarmupSpec = field(default_factory=WarmupSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    steps: int = 1000
    batch_size: int = 64
    critic_steps: int = 5
    ema_decay: float = 0.999
    mixed_precision: str = "no"
    gradient_accumulation_steps: int = 1
    checkpoint_every: int = 200
    checkpoints_to_keep: int = 2
    log_every: int = 10
    disc_hidden: int = 64
    output_dir: str = "outputs/distill"
    export: bool = True
    seed: int = 0
    num_threads: int = 0

    def __post_init__(self):
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision {self.mixed_precision!r} is not one of {PRECISIONS}")
        for name in ("steps", "batch_size", "critic_steps", "gradient_accumulation_steps", "checkpoint_every",
                     "log_every"):
            if getattr(self, name) < (0 if name == "steps" else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        get_divergence(self.objective.divergence)

    @property
    def total_steps(self) -> int:
        return self.warmup.steps + self.steps


class OneStepGenerator(nn.Module):
    """G(z, c) = x̂0(prior(z), t_gen, c) of a network initialised from the teacher."""

    def __init__(self, denoiser: Denoiser, t_gen: float):
        super().__init__()
        self.denoiser, self.t_gen = denoiser, t_gen

    def forward(self, z: Tensor, condition: Tensor | None = None) -> Tensor:
        s = self.denoiser.schedule
        t = torch.full((z.shape[0],), self.t_gen, device=z.device)
        return self.denoiser(s.prior(z), t, condition, guidance_scale=1.0)


@dataclass
class Teacher:
    """Everything the trainer needs from a teacher."""

    denoiser: Denoiser
    sample_shape: tuple[int, ...]
    conditions: Any  # draw(batch, generator) -> condition tensor (labels or prompt embeddings)
    components: dict[str, Any] = field(default_factory=dict)  # vae / text_encoder / tokenizer to export


def _generator(seed: int, step: int, micro: int, rank: int, stream: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(((((seed * 1_000_003 + step) * 1_009 + micro) * 101 + rank) * 7) + stream)


def load_teacher_for(spec: TeacherSpec, guidance_scale: float, device: torch.device, prompts: list[str]) -> Teacher:
    """Build the frozen teacher Denoiser and the condition sampler for ``spec``."""
    if spec.kind == "asset":
        from fdistill.teachers import load_digits_teacher

        den = load_digits_teacher(spec.path, guidance_scale=guidance_scale, feature_modules=spec.feature_modules,
                                  device=device)
        cfg = den.model.config
        num_classes = den.num_classes

        def draw(batch: int, g: torch.Generator) -> Tensor:
            return torch.randint(num_classes, (batch,), generator=g).to(device)

        size = cfg.sample_size if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)[0]
        return Teacher(den, (cfg.in_channels, size, size), draw)
    return _load_pipeline_teacher(spec, guidance_scale, device, prompts)


def _load_pipeline_teacher(spec: TeacherSpec, guidance_scale: float, device: torch.device,
                           prompts: list[str]) -> Teacher:
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    from fdistill.schedules import schedule_from_scheduler

    root = Path(spec.path)
    for sub in ("unet", "scheduler", "text_encoder", "tokenizer"):
        if not (root / sub).is_dir():
            raise ValueError(f"teacher pipeline {root} has no {sub!r} folder (expected an SD-style layout)")
    if not prompts:
        raise ValueError("a text-conditioned teacher needs data.prompts")
    sched_cfg = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    scheduler = getattr(diffusers, sched_cfg["_class_name"]).from_pretrained(root, subfolder="scheduler")
    unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet").to(device).requires_grad_(False)
    text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder").to(device).requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    vae = AutoencoderKL.from_pretrained(root, subfolder="vae") if (root / "vae").is_dir() else None

    @torch.no_grad()
    def encode(texts: list[str]) -> Tensor:
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        return text_encoder(ids)[0]

    table, null = encode(prompts), encode([""])
    den = Denoiser(unet, schedule_from_scheduler(scheduler), "encoder_hidden_states", guidance_scale, null,
                   spec.feature_modules).eval()

    def draw(batch: int, g: torch.Generator) -> Tensor:
        return table[torch.randint(len(prompts), (batch,), generator=g).to(device)]

    size = unet.config.sample_size
    size = size if isinstance(size, int) else tuple(size)[0]
    return Teacher(den, (unet.config.in_channels, size, size), draw,
                   {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler})


class RealData:
    """Real samples x0 and their conditions for the discriminator."""

    def __init__(self, config: DistillConfig, teacher: Teacher, device: torch.device):
        self.device = device
        if config.data.name == "digits":
            from fdistill.data.digits import load_digits_tensors

            x, y = load_digits_tensors("train")
            if tuple(x.shape[1:]) != teacher.sample_shape:
                raise ValueError(f"digits are {tuple(x.shape[1:])} but the teacher samples {teacher.sample_shape}")
            self.x, self.c = x.to(device), y.to(device)
        else:
            g = torch.Generator().manual_seed(config.seed + 12345)
            n, xs, cs = config.data.num_samples, [], []
            for i in range(0, n, config.batch_size):
                b = min(config.batch_size, n - i)
                c = teacher.conditions(b, g)
                z = torch.randn(b, *teacher.sample_shape, generator=g).to(device)
                xs.append(teacher.denoiser.schedule.sample(lambda x, t, c=c: teacher.denoiser(x, t, c), z,
                                                           config.data.sample_steps))
                cs.append(c)
            self.x, self.c = torch.cat(xs), torch.cat(cs)

    def __call__(self, batch: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        i = torch.randint(self.x.shape[0], (batch,), generator=g).to(self.device)
        return self.x[i], self.c[i]


def ode_pairs(teacher: Teacher, spec: WarmupSpec, seed: int, device: torch.device, cache: Path | None,
              batch_size: int = 256) -> tuple[Tensor, Tensor, Tensor]:
    """(z, condition, teacher sample) triples from the teacher's reference sampler; cached on disk."""
    from safetensors.torch import load_file, save_file

    if cache is not None and cache.is_file():
        d = load_file(str(cache))
        if d["z"].shape[0] == spec.ode_pairs:
            return d["z"].to(device), d["c"].to(device), d["x"].to(device)
    g = torch.Generator().manual_seed(seed + 777)
    zs, cs, xs = [], [], []
    den = teacher.denoiser
    for i in range(0, spec.ode_pairs, batch_size):
        b = min(batch_size, spec.ode_pairs - i)
        c = teacher.conditions(b, g)
        z = torch.randn(b, *teacher.sample_shape, generator=g).to(device)
        xs.append(den.schedule.sample(lambda x, t, c=c: den(x, t, c), z, spec.ode_steps))
        zs.append(z)
        cs.append(c)
    z, c, x = torch.cat(zs), torch.cat(cs), torch.cat(xs)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.tmp")
        save_file({"z": z.cpu().contiguous(), "c": c.cpu().contiguous(), "x": x.cpu().contiguous()}, str(tmp))
        tmp.replace(cache)
    return z, c, x


def _check_finite(loss: Tensor, what: str, step: int, logs: dict, out: Path) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite {what} loss at step {step} ({logs}); the checkpoints in {out} "
                                 "are intact: lower the learning rates and --resume")


def _mean_logs(window: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for w in window for k in w}
    return {k: sum(w[k] for w in window if k in w) / sum(k in w for w in window) for k in sorted(keys)}


def _truncate_metrics(path: Path, step: int) -> None:
    if path.is_file():
        keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= step]
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def distill(config: DistillConfig, resume: str | bool | None = None) -> Path:
    """Run f-distill; returns ``output_dir`` (with ``pipeline/`` when ``export``)."""
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    out = Path(config.output_dir)
    # without cpu=True, accelerate treats a torchrun launch on a CPU-only machine as one process
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())
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
            _truncate_metrics(metrics_path, start)
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
        if done % config.checkpoint_every == 0 or done == config.total_steps:
            assert_replicas_agree(student_params, "student weights")
            save_checkpoint(accelerator, out, done, {}, keep=config.checkpoints_to_keep, modules=states)
    bar.close()

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
