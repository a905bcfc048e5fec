"""The typed config of ``fdistill distill`` (YAML + dotted overrides, validated at the door)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fdistill.divergences import get_divergence
from fdistill.models.discriminator import HEAD_KINDS
from fdistill.objective import ObjectiveConfig

from .trainer import PRECISIONS, LoopConfig  # noqa: F401  (PRECISIONS: public name kept here)

TEACHER_KINDS = ("asset", "pipeline")
DATA_NAMES = ("digits", "teacher_samples")
FEATURE_SOURCES = ("teacher", "fake")


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
class DistillConfig(LoopConfig):
    """The f-distill run (the loop's fields — steps, batch_size, ema_decay… — come from :class:`LoopConfig`)."""

    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataSpec = field(default_factory=DataSpec)
    warmup: WarmupSpec = field(default_factory=WarmupSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    discriminator: DiscriminatorSpec = field(default_factory=DiscriminatorSpec)
    critic_steps: int = 4
    critic_warmup_steps: int = 0
    output_dir: str = "outputs/distill"  # the method's own default
    export: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.critic_steps < 1 or self.critic_warmup_steps < 0:
            raise ValueError(f"need critic_steps >= 1 and critic_warmup_steps >= 0, got {self.critic_steps}, "
                             f"{self.critic_warmup_steps}")
        if self.warmup.steps and self.warmup.batch_size % self.gradient_accumulation_steps:
            raise ValueError(f"warmup.batch_size {self.warmup.batch_size} does not split into "
                             f"gradient_accumulation_steps={self.gradient_accumulation_steps} equal micro-batches")
        get_divergence(self.objective.divergence)

    @property
    def total_steps(self) -> int:
        """ODE warm-up, then critic warm-up (critic updates only), then f-distill steps."""
        return self.warmup.steps + self.critic_warmup_steps + self.steps

