"""The typed config of ``fdistill distill`` (YAML + dotted overrides, validated at the door)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fdistill.divergences import get_divergence
from fdistill.models.discriminator import HEAD_KINDS
from fdistill.objective import ObjectiveConfig

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
class DiscriminatorSpec:
    """The density-ratio head on ``teacher.feature_modules`` (one branch per level, logits averaged).

    ``head``: ``conv`` (3×3 convolutions on feature maps) or ``mlp`` (per position, also for tokens).
    """

    head: str = "conv"
    hidden: int = 64

    def __post_init__(self):
        if self.head not in HEAD_KINDS:
            raise ValueError(f"discriminator.head {self.head!r} is not one of {HEAD_KINDS}")
        if self.hidden < 1:
            raise ValueError(f"discriminator.hidden must be >= 1, got {self.hidden}")


@dataclass
class OptimSpec:
    """Adam rates: the student, the fake score and (its own, larger rate) the discriminator head."""

    lr_generator: float = 1e-5
    lr_critic: float = 1e-5
    lr_head: float = 1e-3
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
    discriminator: DiscriminatorSpec = field(default_factory=DiscriminatorSpec)
    steps: int = 1000
    batch_size: int = 64
    critic_steps: int = 4
    critic_warmup_steps: int = 0
    ema_decay: float = 0.999
    mixed_precision: str = "no"
    gradient_accumulation_steps: int = 1
    checkpoint_every: int = 200
    checkpoints_to_keep: int = 2
    log_every: int = 10
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
        if self.critic_warmup_steps < 0:
            raise ValueError(f"critic_warmup_steps must be >= 0, got {self.critic_warmup_steps}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        get_divergence(self.objective.divergence)

    @property
    def total_steps(self) -> int:
        """ODE warm-up, then critic warm-up (critic updates only), then f-distill steps."""
        return self.warmup.steps + self.critic_warmup_steps + self.steps

