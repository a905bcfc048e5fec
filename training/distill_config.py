"""The typed config of ``fdistill distill`` (YAML + dotted overrides, validated at the door)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fdistill.divergences import get_divergence
from fdistill.models.discriminator import HEAD_KINDS
from fdistill.objective import ObjectiveConfig

from .matching import OptimSpec
from .trainer import PRECISIONS, LoopConfig  # noqa: F401  (PRECISIONS: public name kept here)

TEACHER_KINDS = ("asset", "pipeline")
DATA_NAMES = ("digits", "teacher_samples")
FEATURE_SOURCES = ("teacher", "fake")
DROP_MODES = ("remove", "replace")


def _pipeline_class(root: Path) -> str:
    """`` (model_index.json: <class>)`` when the folder has one, for messages."""
    index = root / "model_index.json"
    name = json.loads(index.read_text()).get("_class_name") if index.is_file() else None
    return f" (model_index.json: {name})" if name else ""


def check_teacher_path(kind: str, path: str):
    """Refuse a ``teacher.path`` that ``teacher.kind`` cannot read, naming the setting to change.

    Reads only folder names and json files, so unsupported teachers stop here, before any model is
    imported or an output folder is made. Returns the family adapter class for ``pipeline`` folders.
    """
    from fdistill.families import family_for

    root = Path(path)
    if kind == "asset":
        if root.is_dir() and ((root / "model_index.json").is_file() or (root / "unet").is_dir()):
            raise ValueError(f"teacher.path {path!r} is a diffusers pipeline folder{_pipeline_class(root)}: set "
                             "teacher.kind=pipeline (teacher.kind=asset reads a teacher asset .safetensors or a "
                             "train-teacher output folder)")
        if root.is_dir() and not (root / "teacher.json").is_file():
            raise ValueError(f"teacher.path {path!r} is a folder without teacher.json: teacher.kind=asset reads a "
                             "teacher asset .safetensors or a train-teacher output folder")
        return None
    if not root.is_dir():
        raise ValueError(f"teacher.path {path!r} is a file: teacher.kind=pipeline reads a diffusers pipeline "
                         "folder; set teacher.kind=asset for a teacher asset")
    return family_for(root)


@dataclass
class TeacherSpec:
    """Where the teacher comes from: a shipped/trained teacher asset (``asset``, default: the digits
    teacher) or a diffusers pipeline folder (``pipeline``: SD1.x/2.x, SDXL, SD3, Flux, PixArt or DiT,
    loaded from a local path through its family's adapter, :mod:`fdistill.families`).

    ``feature_modules``: the teacher submodules the discriminator reads (None: ``mid_block`` for UNets,
    the middle transformer block for transformers).
    """

    kind: str = "asset"
    path: str | None = None
    feature_modules: list[str] | None = None
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
        self.family = check_teacher_path(self.kind, self.path) if self.path is not None else None


@dataclass
class DataSpec:
    """Real samples for the discriminator and conditions for the student.

    ``digits``: the embedded digits (labels 0–9). ``teacher_samples``: a pool of ``num_samples``
    teacher samples (``sample_steps`` reference steps) for teachers without a dataset at hand,
    conditioned on ``prompts`` for text models (class-conditional pipelines: every class).
    ``resolution``: the square image size in pixels a pipeline teacher's student is trained at
    (None: the pipeline's default size). ``unconditional``: the student, the real samples and
    the teacher all take the teacher's null condition (its classifier-free-guidance input), so the
    student learns the teacher's unconditional distribution.
    """

    name: str = "digits"
    num_samples: int = 256
    sample_steps: int = 18
    prompts: list[str] = field(default_factory=list)
    unconditional: bool = False
    resolution: int | None = None

    def __post_init__(self):
        if self.name not in DATA_NAMES:
            raise ValueError(f"data.name {self.name!r} is not one of {DATA_NAMES}")
        if self.resolution is not None and self.resolution < 1:
            raise ValueError(f"data.resolution must be a positive number of pixels, got {self.resolution}")


@dataclass
class WarmupSpec:
    """Regression on ``ode_pairs`` teacher ODE pairs (``ode_steps`` reference steps) for ``steps`` steps.

    ``drop_classes``: digit classes left out of the pairs, read by the shipped digits classifier on
    the teacher's samples, for mode-recovery studies (digits teachers only). ``drop_mode`` says how:
    ``remove`` drops those pairs (the student still sees their noise nowhere, but may generalise to
    it), ``replace`` keeps their noise and swaps the target for the class-conditional teacher's sample
    from the same noise with the best-ranked kept class (the next one if that still reads as
    dropped), so every noise has a target and no target is a dropped class.
    """

    steps: int = 0
    ode_pairs: int = 2000
    ode_steps: int = 18
    lr: float = 1e-3
    batch_size: int = 128
    drop_classes: list[int] = field(default_factory=list)
    drop_mode: str = "remove"

    def __post_init__(self):
        bad = [c for c in self.drop_classes if not isinstance(c, int) or not 0 <= c <= 9]
        if bad:
            raise ValueError(f"warmup.drop_classes {bad} are not digit classes (valid: 0..9)")
        if self.drop_mode not in DROP_MODES:
            raise ValueError(f"warmup.drop_mode {self.drop_mode!r} is not one of {DROP_MODES}")
        if len(set(self.drop_classes)) > 9:
            raise ValueError(f"warmup.drop_classes {self.drop_classes} leaves no digit class to keep")


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
        if self.teacher.kind == "pipeline" and self.data.name == "digits":
            raise ValueError("data.name 'digits' gives real digits for the digits teacher; a pipeline teacher "
                             "needs data.name=teacher_samples (real samples drawn from the teacher)")
        family = self.teacher.family
        if family is not None and family.conditioning == "text" and not self.data.prompts:
            raise ValueError(f"teacher.path is a {family.label} pipeline, which is text-conditioned: set data.prompts, "
                             "e.g. data.prompts='[a photo of a cat, a red car]'")
        if family is not None and family.conditioning != "text" and self.data.prompts:
            raise ValueError(f"teacher.path is a {family.label} pipeline, which is class-conditional: remove "
                             "data.prompts (its student learns every class)")
        if self.data.resolution is not None and self.teacher.kind != "pipeline":
            raise ValueError("data.resolution sets a pipeline teacher's image size; an asset teacher has one size")
        if self.warmup.drop_classes and self.teacher.kind != "asset":
            raise ValueError(f"warmup.drop_classes {self.warmup.drop_classes} reads teacher samples with the digits "
                             f"classifier: it needs a digits teacher (teacher.kind=asset), not {self.teacher.kind!r}")
        if self.teacher.kind == "asset" and self.data.prompts:
            raise ValueError("data.prompts conditions text teachers (teacher.kind=pipeline); an asset teacher is "
                             "class-conditional: remove data.prompts")

    @property
    def total_steps(self) -> int:
        """ODE warm-up, then critic warm-up (critic updates only), then f-distill steps."""
        return self.warmup.steps + self.critic_warmup_steps + self.steps

