"""What the distribution-matching methods share (f-distill on images, the Gaussian-mixture toy, the HiAR
student on video).

Each trains a student against the frozen teacher and a *critic*: an online fake score (the student's
distribution) and, when the divergence needs the density ratio r, a discriminator head. Their
optimisers, the :class:`~fdistill.objective.FDistillObjective` over these modules, the phase ladder
(regression warm-up on teacher pairs → critic warm-up → distribution matching) and the regression
warm-up itself are built here once; a method is its losses (and, for video, its rollout).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fdistill.models.discriminator import HEAD_KINDS, FeatureDiscriminator
from fdistill.objective import FDistillObjective, ObjectiveConfig

from .trainer import Draw, LoopConfig, Method, Phase, Update

FEATURE_SOURCES = ("teacher", "fake")


@dataclass
class RegressionWarmup:
    """The regression warm-up (section ``warmup``): ``steps`` updates at ``lr`` on batches of ``batch_size``
    regressing the student's output on the teacher's (0 steps: none)."""

    steps: int = 0
    lr: float = 1e-3
    batch_size: int = 128

    def __post_init__(self):
        for name, ok, valid in (("steps", self.steps >= 0, ">= 0 (0: no warm-up)"), ("lr", self.lr > 0, "> 0"),
                                ("batch_size", self.batch_size >= 1, ">= 1")):
            if not ok:
                raise ValueError(f"warmup.{name} must be {valid}, got {getattr(self, name)}")


@dataclass
class DiscriminatorSpec:
    """The density-ratio head (section ``discriminator``): one branch per tapped feature level, logits averaged.

    ``head``: ``conv`` (3×3 convolutions on feature maps) or ``mlp`` (per position, also for tokens).
    ``feature_modules``: the submodules of ``feature_source`` ("teacher": the frozen teacher; "fake": the
    online fake score) whose outputs the head reads (None: the method's default).
    """

    head: str = "conv"
    hidden: int = 64
    feature_modules: list[str] | None = None
    feature_source: str = "teacher"

    def __post_init__(self):
        if self.head not in HEAD_KINDS:
            raise ValueError(f"discriminator.head {self.head!r} is not one of {HEAD_KINDS}")
        if self.hidden < 1:
            raise ValueError(f"discriminator.hidden must be >= 1, got {self.hidden}")
        if self.feature_source not in FEATURE_SOURCES:
            raise ValueError(f"discriminator.feature_source {self.feature_source!r} is not one of {FEATURE_SOURCES}")


@dataclass
class NetworkSpec:
    """A trained network made from the teacher (section ``student`` or ``fake_score``): a full copy of its
    weights (``lora_rank`` None), or a rank-``lora_rank`` LoRA adapter (scale ``lora_alpha / lora_rank``,
    default 1) on the teacher's own frozen weights, which teacher, student and fake score then share in
    memory (:mod:`fdistill.lora`)."""

    lora_rank: int | None = None
    lora_alpha: float | None = None

    def __post_init__(self):
        if self.lora_rank is not None and self.lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1 (or null for a full copy), got {self.lora_rank}")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")


@dataclass
class OptimSpec:
    """Adam rates: the student, the fake score and (its own, larger rate) the discriminator head."""

    lr_generator: float = 1e-5
    lr_critic: float = 1e-5
    lr_head: float = 1e-3
    beta1: float = 0.0
    beta2: float = 0.999
    grad_clip: float = 10.0

    def __post_init__(self):
        for name in ("lr_generator", "lr_critic", "lr_head"):
            if getattr(self, name) < 0:
                raise ValueError(f"optim.{name} must be >= 0 (0: that network stays as it is), got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"optim.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.grad_clip < 0:
            raise ValueError(f"optim.grad_clip must be >= 0 (0: no clipping), got {self.grad_clip}")


@dataclass
class MatchingConfig(LoopConfig):
    """The settings every distribution-matching method shares (its config subclasses this and may narrow a
    section's type to give it other defaults): ``objective``, the ``warmup``, ``optim`` and ``discriminator``
    sections, and ``critic_steps`` critic updates per generator update after ``critic_warmup_steps``
    critic-only steps."""

    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    warmup: RegressionWarmup = field(default_factory=RegressionWarmup)
    optim: OptimSpec = field(default_factory=OptimSpec)
    discriminator: DiscriminatorSpec = field(default_factory=DiscriminatorSpec)
    critic_steps: int = 4
    critic_warmup_steps: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.critic_steps < 1 or self.critic_warmup_steps < 0:
            raise ValueError(f"need critic_steps >= 1 and critic_warmup_steps >= 0, got {self.critic_steps}, "
                             f"{self.critic_warmup_steps}")
        if self.warmup.steps + self.critic_warmup_steps + self.steps == 0:
            raise ValueError("steps=0 with warmup.steps=0 and critic_warmup_steps=0 trains nothing: set steps >= 1, "
                             "or warmup.steps >= 1 for a warm-up-only run")
        if self.warmup.steps and self.warmup.batch_size % self.gradient_accumulation_steps:
            raise ValueError(f"warmup.batch_size {self.warmup.batch_size} does not split into "
                             f"gradient_accumulation_steps={self.gradient_accumulation_steps} equal micro-batches")


class DistributionMatching(Method):
    """A :class:`~training.trainer.Method` with a student, a fake score and an optional discriminator head.

    Subclasses call :meth:`build_critic` and :meth:`matching_phases` in ``__init__``, set ``schedule``,
    ``score_teacher`` (the teacher x̂0 of the DM loss), ``features_from`` ("teacher", "fake" or None),
    ``device`` and ``config`` (with ``objective``), and write ``critic_loss`` and ``generator_loss``;
    :meth:`prepared` then builds ``self.objective``. The regression warm-up reads ``self.pairs``
    (z, condition or None, teacher x0) through :meth:`generate`.
    """

    features_from: str | None = "teacher"
    pairs: tuple[Tensor, Tensor | None, Tensor] | None = None

    def matching_phases(self, warmup_steps: int, warmup_batch: int, critic_warmup_steps: int, steps: int,
                        critic_steps: int, batch: int, critic_warmup_updates: int | None = None) -> list[Phase]:
        """"warmup" (one regression update a step) → "critic_warmup" (``critic_warmup_updates`` critic
        updates a step, default ``critic_steps``) → "distill" (``critic_steps`` critic updates, one generator
        update)."""
        critic = Update("critic", "critic", self.critic_loss, batch)
        return [Phase("warmup", warmup_steps, (Update("ode_warmup", "warmup", self.regression_loss, warmup_batch),)),
                Phase("critic_warmup", critic_warmup_steps, (critic,) * (critic_warmup_updates or critic_steps)),
                Phase("distill", steps, (critic,) * critic_steps
                      + (Update("generator", "generator", self.generator_loss, batch),))]

    def generate(self, z: Tensor, condition: Tensor | None) -> Tensor:
        """The student's sample x0 = G(z, c) (with gradients)."""
        return self.modules["student"](z, condition)

    def regression_loss(self, draw: Draw) -> tuple[Tensor, dict[str, Tensor]]:
        """Regression of G(z) on the teacher's ODE solution from z (DMD's and CausVid's initialisation)."""
        z, c, x = self.pairs
        i = draw(lambda n, g: torch.randint(z.shape[0], (n,), generator=g))
        loss = (self.generate(z[i], None if c is None else c[i]).float() - x[i]).pow(2).mean()
        return loss, {"ode_mse": loss.detach()}

    def critic_loss(self, draw: Draw) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def generator_loss(self, draw: Draw) -> tuple[Tensor, dict[str, Any]]:
        raise NotImplementedError

    def build_critic(self, student: nn.Module, fake: nn.Module, disc: nn.Module | None,
                     optim: OptimSpec) -> dict[str, torch.optim.Optimizer]:
        """Register student, fake score and discriminator as trained modules; return the critic and
        generator Adams.

        The trained part of the discriminator is its ``head`` when it reads a frozen network's features
        (a :class:`~fdistill.models.discriminator.FeatureDiscriminator`), else the whole of it. The critic
        optimiser holds the fake score at ``lr_critic`` and the discriminator at its own ``lr_head``.
        """
        self.disc = disc
        self.modules = {"student": student, "fake_score": fake}
        groups = [{"params": list(fake.parameters()), "lr": optim.lr_critic}]
        if disc is not None:
            trained = getattr(disc, "head", disc)
            self.modules["discriminator_head"] = trained
            groups.append({"params": list(trained.parameters()), "lr": optim.lr_head})
        betas = (optim.beta1, optim.beta2)
        return {"critic": torch.optim.Adam(groups, betas=betas),
                "generator": torch.optim.Adam(student.parameters(), lr=optim.lr_generator, betas=betas)}

    def prepared(self) -> None:
        m = self.modules
        if isinstance(self.disc, FeatureDiscriminator):
            self.disc.head = m["discriminator_head"]  # the prepared (DDP/FSDP) head
        elif self.disc is not None and "discriminator_head" in m:
            self.disc = m["discriminator_head"]
        self.objective = FDistillObjective(self.schedule, self.score_teacher, m["fake_score"], self.disc,
                                           self.config.objective, features_from=self.features_from)
        self.objective.ratio_normalizer.to(self.device)
        self.states = {"ratio_normalizer": self.objective.ratio_normalizer}
