"""The typed config of ``fdistill distill`` (YAML + dotted overrides, validated at the door)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .matching import MatchingConfig, NetworkSpec, RegressionWarmup

TEACHER_KINDS = ("asset", "pipeline")
DATA_NAMES = ("digits", "teacher_samples", "imagefolder", "webdataset", "cache")
DATASETS = ("imagefolder", "webdataset", "cache")
"""Real data a user brings (``data.path``): an image folder, webdataset shards, a latent cache."""
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
    loaded from a local path through its family's adapter, :mod:`fdistill.families`). The levels the
    discriminator reads are ``discriminator.feature_modules`` (they were ``teacher.feature_modules``).
    """

    RENAMED = {"feature_modules": "discriminator.feature_modules",
               "feature_source": "discriminator.feature_source"}

    kind: str = "asset"
    path: str | None = None

    def __post_init__(self):
        if self.kind not in TEACHER_KINDS:
            raise ValueError(f"teacher.kind {self.kind!r} is not one of {TEACHER_KINDS}")
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
    conditioned on the prompts for text models (class-conditional pipelines: every class).
    ``imagefolder`` (``path``: images with ``metadata.jsonl`` or ``.txt`` captions, caption column
    ``caption_column``), ``webdataset`` (``path``: tar shards such as ``data/shard-{000000..000099}.tar``,
    streamed, split over the ranks) and ``cache`` (``path``: a latent cache made by ``fdistill cache``; its
    runs load no VAE and no text encoder): real images for the discriminator, and (image folder, cache)
    their captions as the student's prompts unless prompts are given.
    ``prompts`` / ``prompts_file`` (one prompt per line): the student's prompts. ``resolution``: the square
    image size in pixels a pipeline teacher's student is trained at (None: the pipeline's default size).
    ``unconditional``: the student, the real samples and the teacher all take the teacher's null condition
    (its classifier-free-guidance input), so the student learns the teacher's unconditional distribution.
    """

    name: str = "digits"
    num_samples: int = 256
    sample_steps: int = 18
    prompts: list[str] = field(default_factory=list)
    prompts_file: str | None = None
    path: str | None = None
    caption_column: str = "text"
    unconditional: bool = False
    resolution: int | None = None

    def __post_init__(self):
        if self.name not in DATA_NAMES:
            raise ValueError(f"data.name {self.name!r} is not one of {DATA_NAMES}")
        if self.resolution is not None and self.resolution < 1:
            raise ValueError(f"data.resolution must be a positive number of pixels, got {self.resolution}")
        if (self.name in DATASETS) != (self.path is not None):
            raise ValueError(f"data.path is read by data.name in {DATASETS} (got data.name={self.name!r}, "
                             f"data.path={self.path!r})")
        if self.name in ("imagefolder", "cache") and not Path(self.path).is_dir():
            raise ValueError(f"data.path {self.path!r} (data.name={self.name}) is not a folder")
        if self.prompts_file is not None and not Path(self.prompts_file).is_file():
            raise ValueError(f"data.prompts_file {self.prompts_file!r} does not exist")
        if self.name == "cache" and (self.prompts or self.prompts_file):
            raise ValueError("data.name=cache trains on the cache's captions (its runs load no text encoder): "
                             "remove data.prompts / data.prompts_file, or cache images with those captions")

    def all_prompts(self) -> list[str]:
        """``prompts``, then the lines of ``prompts_file`` (blank lines skipped)."""
        lines = Path(self.prompts_file).read_text().splitlines() if self.prompts_file else []
        return [*self.prompts, *(line.strip() for line in lines if line.strip())]


@dataclass
class WarmupSpec(RegressionWarmup):
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
        super().__post_init__()
        bad = [c for c in self.drop_classes if not isinstance(c, int) or not 0 <= c <= 9]
        if bad:
            raise ValueError(f"warmup.drop_classes {bad} are not digit classes (valid: 0..9)")
        if self.drop_mode not in DROP_MODES:
            raise ValueError(f"warmup.drop_mode {self.drop_mode!r} is not one of {DROP_MODES}")
        if len(set(self.drop_classes)) > 9:
            raise ValueError(f"warmup.drop_classes {self.drop_classes} leaves no digit class to keep")


@dataclass
class DistillConfig(MatchingConfig):
    """The f-distill run (the loop's fields — steps, batch_size, ema_decay… — come from :class:`LoopConfig`,
    the sections every distribution-matching method shares from :class:`MatchingConfig`).

    ``student`` / ``fake_score``: full copies of the teacher or LoRA adapters on its shared weights;
    ``gradient_checkpointing``: the networks' own activation checkpointing in the trained networks."""

    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    data: DataSpec = field(default_factory=DataSpec)
    warmup: WarmupSpec = field(default_factory=WarmupSpec)
    student: NetworkSpec = field(default_factory=NetworkSpec)
    fake_score: NetworkSpec = field(default_factory=NetworkSpec)
    gradient_checkpointing: bool = False
    output_dir: str = "outputs/distill"  # the method's own default
    export: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.teacher.kind == "pipeline" and self.data.name == "digits":
            raise ValueError("data.name 'digits' gives real digits for the digits teacher; a pipeline teacher "
                             f"needs data.name=teacher_samples (real samples drawn from the teacher) or one of {DATASETS}")
        if self.teacher.kind == "asset" and self.data.name in DATASETS:
            raise ValueError(f"data.name={self.data.name} brings images for a pipeline teacher (teacher.kind=pipeline)")
        family = self.teacher.family
        prompts = self.data.prompts or self.data.prompts_file
        if family is not None and family.conditioning == "text" and not prompts and self.data.name not in (
                "imagefolder", "cache"):
            raise ValueError(f"teacher.path is a {family.label} pipeline, which is text-conditioned: set data.prompts, "
                             "e.g. data.prompts='[a photo of a cat, a red car]', or data.prompts_file")
        if family is not None and family.conditioning != "text" and prompts:
            raise ValueError(f"teacher.path is a {family.label} pipeline, which is class-conditional: remove "
                             "data.prompts (its student learns every class)")
        if self.data.resolution is not None and self.teacher.kind != "pipeline":
            raise ValueError("data.resolution sets a pipeline teacher's image size; an asset teacher has one size")
        if self.warmup.drop_classes and self.teacher.kind != "asset":
            raise ValueError(f"warmup.drop_classes {self.warmup.drop_classes} reads teacher samples with the digits "
                             f"classifier: it needs a digits teacher (teacher.kind=asset), not {self.teacher.kind!r}")
        if self.teacher.kind == "asset" and (self.data.prompts or self.data.prompts_file):
            raise ValueError("data.prompts conditions text teachers (teacher.kind=pipeline); an asset teacher is "
                             "class-conditional: remove data.prompts")

    @property
    def total_steps(self) -> int:
        """ODE warm-up, then critic warm-up (critic updates only), then f-distill steps."""
        return self.warmup.steps + self.critic_warmup_steps + self.steps

