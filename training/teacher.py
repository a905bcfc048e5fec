"""Train a tiny class-conditional diffusion teacher (digits UNet or moving-digits Wan transformer).

One loss for every schedule: x_t = α_t x0 + σ_t ε, x̂0 = schedule.to_x0(F(model_input, model_time)),
L = E_t[λ(t) ‖x̂0 − x0‖²] with λ = ``schedule.x0_loss_weight`` (``loss_weighting: schedule``, EDM's
weighting for EDM) or λ = 1/σ_t² (``velocity``: exactly the velocity MSE ‖v̂ − (ε − x0)‖² of flow
matching). Labels are replaced by ``null_label = num_classes`` with probability
``label_dropout`` so the teacher also learns the unconditional model classifier-free guidance needs.

The loop (:mod:`fdistill.training.trainer`) seeds every draw of step s by (seed, s), so a run resumed
from a checkpoint sees the same batches, times and noise as an uninterrupted one.

CLI: ``fdistill train-teacher --config configs/digits_teacher.yaml [key=value ...] [--resume latest]``
or ``python -m fdistill.training.teacher`` with the same arguments.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fdistill.losses import denoising_loss
from fdistill.schedules import SCHEDULES, NoiseSchedule, get_schedule
from fdistill.teachers import LabelEmbedding, model_class

from .checkpoint import atomic_write_text
from .config import ConfigError, load_config
from .trainer import Draw, LoopConfig, Method, Phase, Update, train, trainable

MODEL_KINDS = {"unet2d": "UNet2DModel", "wan": "WanTransformer3DModel", "pipeline": None}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DATASETS = ("digits", "moving_digits")
LOSS_WEIGHTINGS = ("schedule", "velocity")
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class ModelConfig:
    """The diffusers model: ``kind`` picks the class, ``config`` is its constructor config.

    ``label_tokens`` (wan only): tokens of the label embedding fed as ``encoder_hidden_states``.
    ``kind: pipeline`` trains the denoiser of the diffusers pipeline folder ``path`` (any teacher family,
    :mod:`fdistill.families`) in its VAE's latent space, conditioned on captions through the pipeline's
    own text encoders (frozen); its noise schedule is the folder's scheduler's.
    """

    kind: str = "unet2d"
    config: dict = field(default_factory=dict)
    label_tokens: int = 1
    path: str | None = None

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model.kind {self.kind!r} unknown; valid: {', '.join(MODEL_KINDS)}")
        if self.label_tokens < 1:
            raise ValueError(f"model.label_tokens must be >= 1, got {self.label_tokens}")
        if self.kind == "pipeline":
            if not self.path:
                raise ValueError("model.kind=pipeline needs model.path (a diffusers pipeline folder to train)")
            if not Path(self.path).is_dir():
                raise ValueError(f"model.path {self.path!r} is not a folder")
            from fdistill.families import family_for

            family_for(self.path)  # refuses a folder no family reads, by name
        elif self.path is not None:
            raise ValueError(f"model.path is read by model.kind=pipeline only, not {self.kind!r}")


@dataclass
class ScheduleConfig:
    name: str = "edm"
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise ValueError(f"schedule.name {self.name!r} unknown; valid: {', '.join(SCHEDULES)}")


@dataclass
class DataConfig:
    """``name``: ``digits`` (kwargs: split) or ``moving_digits`` (kwargs of ``MovingDigits``).

    ``captions`` (text-conditioned ``model.kind=pipeline`` teachers): caption templates with one ``{}``
    for the digit's word ("a handwritten {}" → "a handwritten seven"); each sample takes one at random.
    """

    name: str = ""
    kwargs: dict = field(default_factory=dict)
    captions: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.name:
            raise ValueError(f"data.name is required; valid: {', '.join(DATASETS)}")
        if self.name not in DATASETS:
            raise ValueError(f"data.name {self.name!r} unknown; valid: {', '.join(DATASETS)}")
        bad = [c for c in self.captions if c.count("{}") != 1]
        if bad:
            raise ValueError(f"data.captions {bad} must each hold exactly one '{{}}' (the digit's word)")

    def caption_table(self) -> list[str]:
        """Every caption, template-major: caption ``k·10 + d`` is template k with digit d."""
        return [template.format(word) for template in self.captions for word in DIGIT_WORDS]


@dataclass
class TeacherConfig(LoopConfig):
    """The teacher run (the loop's fields — steps, batch_size, ema_decay… — come from :class:`LoopConfig`)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    num_classes: int = 10
    label_dropout: float = 0.1
    loss_weighting: str = "schedule"
    lr: float = 1e-3
    warmup_steps: int = 100
    lr_schedule: str = "constant"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    output_dir: str = "runs/teacher"  # the method's own default

    def __post_init__(self):
        super().__post_init__()
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting {self.loss_weighting!r} unknown; valid: {', '.join(LOSS_WEIGHTINGS)}")
        if self.loss_weighting == "velocity" and self.schedule.name != "flow" and self.model.kind != "pipeline":
            raise ValueError("loss_weighting=velocity is the flow-matching loss; it needs schedule.name=flow")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        for name in ("num_classes", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule {self.lr_schedule!r} unknown; valid: {', '.join(LR_SCHEDULES)}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.lr <= 0 or self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError("need lr > 0, warmup_steps >= 0 and grad_clip >= 0 (0 disables clipping)")
        if self.model.kind == "pipeline":
            if self.data.name != "digits":
                raise ValueError(f"model.kind=pipeline trains on data.name=digits (with captions), not {self.data.name!r}")
            if self.schedule != ScheduleConfig():
                raise ValueError("model.kind=pipeline takes its noise schedule from the folder's scheduler: "
                                 "remove the schedule section")
        elif self.data.captions:
            raise ValueError("data.captions condition model.kind=pipeline teachers only")


class TeacherNet(nn.Module):
    """The diffusers model plus (wan) its label embedding; ``forward(sample, timestep, labels)``."""

    def __init__(self, model: nn.Module, label_embedding: LabelEmbedding | None):
        super().__init__()
        self.model, self.label_embedding = model, label_embedding

    def forward(self, sample: Tensor, timestep: Tensor, labels: Tensor) -> Tensor:
        if self.label_embedding is None:
            return self.model(sample, timestep, class_labels=labels).sample
        return self.model(sample, timestep, encoder_hidden_states=self.label_embedding(labels)).sample


class PipelineTeacherNet(nn.Module):
    """A pipeline folder's denoiser (:class:`~fdistill.families.FamilyNet`) with its condition table.

    ``labels`` index ``table``: the encoded captions (text families) or class labels (class families),
    then the family's unconditional input at index ``len(table) − 1`` (``null_label``).
    """

    def __init__(self, net: nn.Module, table: Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("table", table, persistent=False)  # re-encoded from the folder on every start

    @property
    def null_label(self) -> int:
        return self.table.shape[0] - 1

    def forward(self, sample: Tensor, timestep: Tensor, labels: Tensor) -> Tensor:
        return self.net(sample, timestep, self.table[labels])


def load_training_family(config: TeacherConfig, device: torch.device | str = "cpu"):
    """(family, condition table with the null row last) of a ``model.kind=pipeline`` run."""
    from fdistill.families import load_family

    family = load_family(config.model.path, device)
    if family.conditioning == "text":
        if not config.data.captions:
            raise ConfigError(f"a {family.label} teacher is text-conditioned: set data.captions, e.g. "
                              "data.captions='[a handwritten {}]'")
        rows = family.conditions(config.data.caption_table())
    else:
        if config.data.captions:
            raise ConfigError(f"a {family.label} teacher is class-conditional: remove data.captions")
        rows = family.conditions(list(range(config.num_classes)))
    if config.loss_weighting == "velocity" and type(family.schedule).__name__ != "FlowMatchingSchedule":
        raise ConfigError("loss_weighting=velocity is the flow-matching loss; this folder's scheduler is not flow matching")
    return family, torch.cat([rows, family.null_condition()])


def build_teacher_net(config: TeacherConfig, family=None, table: Tensor | None = None) -> nn.Module:
    if config.model.kind == "pipeline":
        import copy

        from fdistill.families import FamilyNet

        model = copy.deepcopy(family.model).requires_grad_(True).train()
        return PipelineTeacherNet(FamilyNet(model, family), table)
    cls = model_class(MODEL_KINDS[config.model.kind])
    model_config = dict(config.model.config)
    label_embedding = None
    if config.model.kind == "unet2d":
        expected = config.num_classes + 1
        if model_config.setdefault("num_class_embeds", expected) != expected:
            raise ConfigError(f"model.config.num_class_embeds must be num_classes + 1 = {expected} "
                              "(the extra class is the null label of classifier-free guidance)")
    try:
        model = cls.from_config(model_config)
    except TypeError as e:
        raise ConfigError(f"model.config does not fit {cls.__name__}: {e}") from e
    if config.model.kind == "wan":
        label_embedding = LabelEmbedding(config.num_classes, model.config.text_dim, config.model.label_tokens)
    return TeacherNet(model, label_embedding)


class _BatchSource:
    """Draws a training batch (x0, labels) with an explicit generator.

    Moving-digits videos are rendered once up front when they fit in ``PRERENDER_BYTES``, else on demand
    per batch (Python work that can bound a GPU step); both give the same batches.
    """

    PRERENDER_BYTES = 1 << 30

    def __init__(self, data: DataConfig, family=None):
        self.templates = len(data.captions)
        if family is not None:  # a pipeline teacher learns the digits in its VAE's latent space
            from fdistill.data.digits import load_digits_tensors

            images, self.labels = load_digits_tensors(**data.kwargs)
            self.images = family.latents_from_images(images)
            self.dataset, self.size = None, len(self.labels)
            return
        if data.name == "digits":
            from fdistill.data.digits import load_digits_tensors

            self.images, self.labels = load_digits_tensors(**data.kwargs)
            self.dataset = None
            self.size = len(self.labels)
        else:
            from fdistill.data.moving_digits import MovingDigits

            self.dataset = MovingDigits(**data.kwargs)
            self.size = len(self.dataset)
            d = self.dataset
            if 4 * self.size * d.num_frames * d.size**2 <= self.PRERENDER_BYTES:
                self.images, self.labels = d.tensors()
                self.dataset = None

    def __call__(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        index = torch.randint(self.size, (batch_size,), generator=generator)
        if self.templates:  # label = the caption's row: template k, digit d → k·10 + d
            template = torch.randint(self.templates, (batch_size,), generator=generator)
            return self.images[index], template * 10 + self.labels[index]
        if self.dataset is None:
            return self.images[index], self.labels[index]
        items = [self.dataset[int(i)] for i in index]
        return torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])


def teacher_loss(net: nn.Module, schedule: NoiseSchedule, x0: Tensor, labels: Tensor, t: Tensor,
                 noise: Tensor, weighting: str = "schedule") -> Tensor:
    """E[λ(t) ‖x̂0(x_t, t) − x0‖²] for one batch; x0 (B, C, ...) and t (B,)."""
    x_t = schedule.add_noise(x0, noise, t)
    out = net(schedule.model_input(x_t, t), schedule.model_time(t), labels)
    x0_hat = schedule.to_x0(out.float(), x_t, t)
    if weighting == "velocity":
        weight = 1.0 / schedule.alpha_sigma(t)[1] ** 2
    else:
        weight = schedule.x0_loss_weight(t)
    return denoising_loss(x0_hat, x0, weight)


def lr_factor(config: TeacherConfig, step: int) -> float:
    """Linear warm-up, then constant or cosine decay to ``min_lr_ratio`` at ``steps``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _teacher_metadata(config: TeacherConfig, net: TeacherNet) -> dict[str, Any]:
    return {
        "model_class": type(net.model).__name__,
        "schedule": {"name": config.schedule.name, "kwargs": dict(config.schedule.kwargs)},
        "num_classes": config.num_classes,
        "null_label": config.num_classes,
        "label_embedding": net.label_embedding.config() if net.label_embedding is not None else None,
        "data": {"name": config.data.name, "kwargs": dict(config.data.kwargs)},
        "loss_weighting": config.loss_weighting,
        "parameters": sum(p.numel() for p in net.parameters()),
    }


class TeacherMethod(Method):
    """Denoising score matching: x_t = α_t x0 + σ_t ε, L = λ(t) ‖x̂0(x_t, t, y) − x0‖², with the label
    y replaced by the null label with probability ``label_dropout`` (for classifier-free guidance)."""

    def __init__(self, config: TeacherConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.family = self.table = None
        if config.model.kind == "pipeline":
            self.family, self.table = load_training_family(config, device)
            self.schedule = self.family.schedule
        else:
            self.schedule = get_schedule(config.schedule.name, **config.schedule.kwargs)
        net = build_teacher_net(config, self.family, self.table)
        self.null_label = net.null_label if self.family is not None else config.num_classes
        self.source = _BatchSource(config.data, self.family)
        optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.modules, self.optimizers = {"net": net}, {"net": optimizer}
        self.schedulers = {"net": torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(config, s))}
        self.ema, self.states = {"ema": "net"}, {}
        self.phases = [Phase("train", config.steps, (Update("denoising", "net", self.loss, config.batch_size),))]

    def loss(self, draw: Draw) -> tuple[Tensor, dict[str, Tensor]]:
        c = self.config
        x0, labels = draw(self.source)
        drop = draw(lambda n, g: torch.rand(n, generator=g)) < c.label_dropout
        labels = torch.where(drop, torch.full_like(labels, self.null_label), labels)
        t = draw(lambda n, g: self.schedule.sample_training_t(n, generator=g))
        noise = draw.randn(*x0.shape[1:])
        loss = teacher_loss(self.modules["net"], self.schedule, x0, labels, t, noise, c.loss_weighting)
        return loss, {"loss": loss}

    def finish(self, output_dir: Path, ema: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        final = build_teacher_net(self.config, self.family, self.table)
        if self.family is not None:  # the folder again, with the trained denoiser and its own scheduler
            ema["ema"].copy_to(trainable(final))
            self.family.export(final.net.model.cpu().eval(), output_dir / "pipeline",
                               scheduler=self.family.pipe.scheduler, extra={"trained_from": self.config.model.path})
            return
        ema["ema"].copy_to(trainable(final))
        final.model.save_pretrained(output_dir / "model", safe_serialization=True)
        if final.label_embedding is not None:
            save_file({k: v.contiguous() for k, v in final.label_embedding.state_dict().items()},
                      str(output_dir / "label_embedding.safetensors"))
        atomic_write_text(output_dir / "teacher.json",
                          json.dumps(_teacher_metadata(self.config, final), indent=1) + "\n")


def train_teacher(config: TeacherConfig, resume: str | bool | None = None) -> Path:
    """Train, checkpoint every ``checkpoint_every`` steps, and save the EMA teacher.

    Writes into ``output_dir``: ``config.yaml``, ``metrics.jsonl``, ``checkpoint-<step>/``,
    and at the end ``model/`` (EMA weights, ``save_pretrained``), ``teacher.json`` and, for wan,
    ``label_embedding.safetensors``; for ``model.kind=pipeline``, ``pipeline/`` (the folder with the
    trained EMA denoiser). Returns ``output_dir``. ``batch_size`` is the global batch
    (split over processes and ``gradient_accumulation_steps`` micro-batches).
    """
    return train(config, lambda accelerator: TeacherMethod(config, accelerator.device), resume, config.grad_clip,
                 "teacher").output_dir


def train_teacher_from_cli(config_path: str | Path | None, overrides: Sequence[str] = (),
                           resume: str | None = None) -> Path:
    """Entry point for ``fdistill train-teacher``: load the YAML config + overrides and train."""
    return train_teacher(load_config(TeacherConfig, config_path, overrides), resume=resume)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fdistill train-teacher", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML file, e.g. configs/digits_teacher.yaml")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. steps=2000 schedule.kwargs.shift=3")
    args = parser.parse_args(argv)
    try:
        out = train_teacher_from_cli(args.config, args.overrides, args.resume)
    except ConfigError as e:
        parser.error(str(e))
    print(f"teacher saved to {out}")


if __name__ == "__main__":
    main()
