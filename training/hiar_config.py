"""The typed config of ``fdistill distill-video`` (HiAR student; YAML + dotted overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fdistill.divergences import get_divergence
from fdistill.objective import ObjectiveConfig

from .matching import OptimSpec
from .trainer import LoopConfig

TRAIN_ORDERS = ("hierarchical", "sequential")
REG_ATTENTION = ("bidirectional", "block_causal")
CONTEXTS = ("next", "same")


@dataclass
class ClipSpec:
    """The training clip and the student's grid: ``num_frames`` latent frames in blocks of
    ``frames_per_block``; ``denoising_steps`` are timesteps in (0, 1000] warped by the teacher's shift."""

    num_frames: int = 12
    frames_per_block: int = 2
    denoising_steps: list[int] = field(default_factory=lambda: [1000, 750, 500, 250])
    window: int | None = None
    context: str = "next"

    def __post_init__(self):
        if self.num_frames < 1 or self.frames_per_block < 1 or self.num_frames % self.frames_per_block:
            raise ValueError(f"clip.num_frames={self.num_frames} must be a positive multiple of "
                             f"clip.frames_per_block={self.frames_per_block}")
        steps = self.denoising_steps
        if not steps or any(a <= b for a, b in zip(steps, steps[1:], strict=False)) or steps[-1] <= 0 or steps[0] > 1000:
            raise ValueError(f"clip.denoising_steps must be decreasing timesteps in (0, 1000], got {steps}")
        if self.window is not None and self.window < self.frames_per_block:
            raise ValueError(f"clip.window={self.window} is smaller than a block ({self.frames_per_block} frames)")
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
class InitSpec:
    """Stage 2: ODE regression of the causal student (block-causal, a random step per block)."""

    steps: int = 100
    lr: float = 1e-4
    batch_size: int = 8

    def __post_init__(self):
        if self.steps < 0 or self.lr <= 0 or self.batch_size < 1:
            raise ValueError(f"need init.steps >= 0, init.lr > 0, init.batch_size >= 1, got {self.steps}, "
                             f"{self.lr}, {self.batch_size}")


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


@dataclass
class HiARDiscriminatorSpec:
    """A per-token MLP head on the frozen teacher's transformer blocks (used when the divergence needs r)."""

    feature_modules: list[str] = field(default_factory=lambda: ["blocks.2", "blocks.5"])
    hidden: int = 64


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


def _default_objective() -> ObjectiveConfig:
    return ObjectiveConfig(divergence="reverse_kl", guidance_scale=2.0, gan_weight=0.0)


@dataclass
class HiARConfig(LoopConfig):
    """The HiAR student run: init steps, then ``steps`` self-rollout iterations (``critic_steps``
    critic updates and one generator update each). ``order``: ``hierarchical`` (HiAR) or
    ``sequential`` (Self-Forcing)."""

    teacher_path: str | None = None
    clip: ClipSpec = field(default_factory=ClipSpec)
    trajectories: TrajectorySpec = field(default_factory=TrajectorySpec)
    init: InitSpec = field(default_factory=InitSpec)
    regulariser: RegulariserSpec = field(default_factory=RegulariserSpec)
    objective: ObjectiveConfig = field(default_factory=_default_objective)
    dm_time: DMTimeSpec = field(default_factory=DMTimeSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    discriminator: HiARDiscriminatorSpec = field(default_factory=HiARDiscriminatorSpec)
    order: str = "hierarchical"
    critic_steps: int = 2
    batch_size: int = 4
    output_dir: str = "outputs/hiar"
    export: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.order not in TRAIN_ORDERS:
            raise ValueError(f"order {self.order!r} is not one of {TRAIN_ORDERS}")
        if self.critic_steps < 1:
            raise ValueError(f"critic_steps must be >= 1, got {self.critic_steps}")
        if self.teacher_path is not None and not Path(self.teacher_path).exists():
            raise ValueError(f"teacher_path {self.teacher_path!r} does not exist")
        if self.init.steps and self.init.batch_size % self.gradient_accumulation_steps:
            raise ValueError(f"init.batch_size {self.init.batch_size} does not split into "
                             f"gradient_accumulation_steps={self.gradient_accumulation_steps} micro-batches")
        get_divergence(self.objective.divergence)

    @property
    def total_steps(self) -> int:
        return self.init.steps + self.steps
