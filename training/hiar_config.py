"""The typed config of ``fdistill distill-video`` (HiAR student; YAML + dotted overrides)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fdistill.models.hiar_cell import check_sink_frames
from fdistill.objective import ObjectiveConfig

from .matching import DiscriminatorSpec, MatchingConfig, RegressionWarmup

TRAIN_ORDERS = ("hierarchical", "sequential")
REG_ATTENTION = ("bidirectional", "block_causal")
CONTEXTS = ("next", "same")


@dataclass
class ClipSpec:
    """The training clip and the student's grid: ``num_frames`` latent frames in blocks of
    ``frames_per_block``; ``denoising_steps`` are timesteps in (0, 1000] warped by the teacher's shift.
    ``height`` / ``width``: frame size in pixels (a Wan folder teacher needs them; the moving-digits teacher
    has its own). ``window`` / ``sink_frames``: the rolling attention window and attention sink of the
    self-rollouts, saved as the student's defaults (``HiARPipeline``'s arguments of the same names)."""

    num_frames: int = 12
    frames_per_block: int = 2
    denoising_steps: list[int] = field(default_factory=lambda: [1000, 750, 500, 250])
    window: int | None = None
    sink_frames: int = 0
    context: str = "next"
    height: int | None = None
    width: int | None = None

    def __post_init__(self):
        if self.num_frames < 1 or self.frames_per_block < 1 or self.num_frames % self.frames_per_block:
            raise ValueError(f"clip.num_frames={self.num_frames} must be a positive multiple of "
                             f"clip.frames_per_block={self.frames_per_block}")
        steps = self.denoising_steps
        if not steps or any(a <= b for a, b in zip(steps, steps[1:], strict=False)) or steps[-1] <= 0 or steps[0] > 1000:
            raise ValueError(f"clip.denoising_steps must be decreasing timesteps in (0, 1000], got {steps}")
        if self.window is not None and self.window < self.frames_per_block:
            raise ValueError(f"clip.window={self.window} is smaller than a block ({self.frames_per_block} frames)")
        check_sink_frames(self.sink_frames, self.window, self.frames_per_block, name="clip.sink_frames")
        if self.context not in CONTEXTS:
            raise ValueError(f"clip.context {self.context!r} is not one of {CONTEXTS}")


@dataclass
class TrajectorySpec:
    """Stage 1: ODE trajectories of the bidirectional teacher, cached in ``cache_dir`` by their settings.

    ``steps_per_interval`` Euler steps between consecutive student times (evenly spaced before the
    shift), so the student's times are exactly on the teacher's grid; the teacher's first step is
    the first point after pure noise.
    """

    count: int = 256
    steps_per_interval: int = 6
    guidance_scale: float = 2.0
    batch_size: int = 32
    cache_dir: str = "outputs/hiar_trajectories"

    def __post_init__(self):
        if self.count < 1 or self.steps_per_interval < 1 or self.batch_size < 1:
            raise ValueError(f"trajectories.count, steps_per_interval and batch_size must be >= 1, got "
                             f"{self.count}, {self.steps_per_interval}, {self.batch_size}")


@dataclass
class HiARTeacherSpec:
    """The bidirectional video teacher: a label-conditioned teacher asset ``.safetensors`` or train-teacher
    folder (None: the shipped moving-digits teacher), or a stock diffusers Wan2.1 text-to-video folder
    (``WanPipeline``), whose student learns from the prompts of ``data``."""

    path: str | None = None

    def __post_init__(self):
        if self.path is not None and not Path(self.path).exists():
            raise ValueError(f"teacher.path {self.path!r} does not exist")

    @property
    def is_wan_folder(self) -> bool:
        index = Path(self.path or "") / "model_index.json"
        if self.path is None or not index.is_file():
            return False
        name = json.loads(index.read_text()).get("_class_name")
        if name != "WanPipeline":
            raise ValueError(f"teacher.path {self.path!r} is a {name} folder; distill-video reads a WanPipeline "
                             "(Wan2.1 text-to-video) folder or a label-conditioned teacher asset")
        return True


@dataclass
class VideoDataSpec:
    """The prompts a text-to-video student learns (a Wan folder teacher): ``prompts`` and the lines of
    ``prompts_file``, encoded once by the teacher's text encoder (``max_sequence_length`` tokens, as
    ``WanPipeline``)."""

    prompts: list[str] = field(default_factory=list)
    prompts_file: str | None = None
    max_sequence_length: int = 512

    def __post_init__(self):
        if self.prompts_file is not None and not Path(self.prompts_file).is_file():
            raise ValueError(f"data.prompts_file {self.prompts_file!r} does not exist")
        if self.max_sequence_length < 1:
            raise ValueError(f"data.max_sequence_length must be >= 1, got {self.max_sequence_length}")

    def all_prompts(self) -> list[str]:
        lines = Path(self.prompts_file).read_text().splitlines() if self.prompts_file else []
        return [*self.prompts, *(line.strip() for line in lines if line.strip())]


@dataclass
class RegulariserSpec:
    """The forward-KL regulariser on exit step 0 (``weight`` 0 disables it: DM then trains every step)."""

    weight: float = 0.1
    attention: str = "bidirectional"

    def __post_init__(self):
        if self.weight < 0:
            raise ValueError(f"regulariser.weight must be >= 0, got {self.weight}")
        if self.attention not in REG_ATTENTION:
            raise ValueError(f"regulariser.attention {self.attention!r} is not one of {REG_ATTENTION}")


DM_TIMES = ("schedule", "uniform")


@dataclass
class DMTimeSpec:
    """Noise times of the DM loss and the critic: ``schedule`` (the teacher's training distribution,
    shifted by ``objective.t_shift``) or ``uniform`` (the reference code: u ~ U(0, 1), warped by
    ``shift``, clamped to [``t_min``, ``t_max``]; HiAR/Self-Forcing: shift 5, [0.02, 0.98])."""

    kind: str = "schedule"
    shift: float = 5.0
    t_min: float = 0.02
    t_max: float = 0.98

    def __post_init__(self):
        if self.kind not in DM_TIMES:
            raise ValueError(f"dm_time.kind {self.kind!r} is not one of {DM_TIMES}")
        if self.shift <= 0 or not 0 <= self.t_min < self.t_max <= 1:
            raise ValueError(f"need dm_time.shift > 0 and 0 <= t_min < t_max <= 1, got shift={self.shift}, "
                             f"t_min={self.t_min}, t_max={self.t_max}")


@dataclass
class HiARObjective(ObjectiveConfig):
    """The objective's settings with HiAR's defaults: reverse-KL (DMD), guided teacher, no GAN term."""

    divergence: str = "reverse_kl"
    guidance_scale: float = 2.0
    gan_weight: float = 0.0


@dataclass
class HiARWarmup(RegressionWarmup):
    """The block-causal ODE regression's defaults."""

    steps: int = 100
    lr: float = 1e-4
    batch_size: int = 8


@dataclass
class VideoDiscriminatorSpec(DiscriminatorSpec):
    """The shared discriminator section with the video defaults: a per-token MLP on two teacher blocks."""

    head: str = "mlp"
    feature_modules: list[str] | None = field(default_factory=lambda: ["blocks.2", "blocks.5"])


@dataclass
class HiARConfig(MatchingConfig):
    """The HiAR student run: ``warmup.steps`` block-causal ODE regression steps, ``critic_warmup_steps``
    critic-only steps, then ``steps`` self-rollout iterations (``critic_steps`` critic updates and one
    generator update each). ``order``: ``hierarchical`` (HiAR) or ``sequential`` (Self-Forcing)."""

    RENAMED = {"init": "warmup", "teacher_path": "teacher.path"}

    teacher: HiARTeacherSpec = field(default_factory=HiARTeacherSpec)
    data: VideoDataSpec = field(default_factory=VideoDataSpec)
    clip: ClipSpec = field(default_factory=ClipSpec)
    trajectories: TrajectorySpec = field(default_factory=TrajectorySpec)
    warmup: HiARWarmup = field(default_factory=HiARWarmup)
    regulariser: RegulariserSpec = field(default_factory=RegulariserSpec)
    objective: HiARObjective = field(default_factory=HiARObjective)
    dm_time: DMTimeSpec = field(default_factory=DMTimeSpec)
    discriminator: VideoDiscriminatorSpec = field(default_factory=VideoDiscriminatorSpec)
    order: str = "hierarchical"
    critic_steps: int = 2
    batch_size: int = 4
    output_dir: str = "outputs/hiar_student"
    export: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.order not in TRAIN_ORDERS:
            raise ValueError(f"order {self.order!r} is not one of {TRAIN_ORDERS}")
        if self.teacher.is_wan_folder:
            if not self.data.all_prompts():
                raise ValueError("a Wan text-to-video teacher needs prompts: data.prompts_file=<one prompt per line> "
                                 "or data.prompts='[a cat walks, a red car drives]'")
            if self.clip.height is None or self.clip.width is None:
                raise ValueError("a Wan teacher needs the frame size: clip.height and clip.width (pixels)")
        elif self.data.all_prompts():
            raise ValueError("data.prompts condition a Wan text-to-video teacher; the moving-digits teacher draws labels")
        if self.discriminator.feature_source != "teacher":
            raise ValueError("discriminator.feature_source: the HiAR student reads the frozen teacher's features "
                             f"('teacher'), got {self.discriminator.feature_source!r}")
