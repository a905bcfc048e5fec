"""What the distribution-matching methods share (f-distill on images, the HiAR student on video).

Both train a generator against the frozen teacher and a *critic*: an online fake score (the
student's distribution) and, when the divergence needs the density ratio r, a discriminator head
on features of a frozen network. Their optimisers and the :class:`~fdistill.objective.FDistillObjective`
over these modules are built here once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fdistill.denoisers import Denoiser
from fdistill.models.discriminator import FeatureDiscriminator
from fdistill.objective import FDistillObjective

from .trainer import Method


@dataclass
class OptimSpec:
    """Adam rates: the student, the fake score and (its own, larger rate) the discriminator head."""

    lr_generator: float = 1e-5
    lr_critic: float = 1e-5
    lr_head: float = 1e-3
    beta1: float = 0.0
    beta2: float = 0.999
    grad_clip: float = 10.0


class DistributionMatching(Method):
    """A :class:`~training.trainer.Method` with a student, a fake score and an optional discriminator head.

    Subclasses call :meth:`build_critic` in ``__init__`` and set ``schedule``, ``score_teacher`` (the
    teacher :class:`Denoiser` of the DM loss), ``features_from`` ("teacher" or "fake"), ``device`` and
    ``config`` (with ``objective`` and ``optim``); :meth:`prepared` then builds ``self.objective``.
    """

    features_from = "teacher"

    def build_critic(self, student: nn.Module, fake: Denoiser, disc: FeatureDiscriminator | None,
                     optim: OptimSpec) -> dict[str, torch.optim.Optimizer]:
        """Register student, fake score and head as trained modules; return the critic and generator Adams.

        The critic optimiser holds the fake score at ``lr_critic`` and the head at its own ``lr_head``.
        """
        self.disc = disc
        self.modules = {"student": student, "fake_score": fake}
        groups = [{"params": list(fake.parameters()), "lr": optim.lr_critic}]
        if disc is not None:
            self.modules["discriminator_head"] = disc.head
            groups.append({"params": list(disc.head.parameters()), "lr": optim.lr_head})
        betas = (optim.beta1, optim.beta2)
        return {"critic": torch.optim.Adam(groups, betas=betas),
                "generator": torch.optim.Adam(student.parameters(), lr=optim.lr_generator, betas=betas)}

    def prepared(self) -> None:
        m = self.modules
        if self.disc is not None:
            self.disc.head = m["discriminator_head"]  # the prepared (DDP/FSDP) head
        self.objective = FDistillObjective(self.schedule, self.score_teacher, m["fake_score"], self.disc,
                                           self.config.objective, features_from=self.features_from)
        self.objective.ratio_normalizer.to(self.device)
        self.states = {"ratio_normalizer": self.objective.ratio_normalizer}
