"""DiT: a class-conditional latent transformer (ImageNet labels, null label 1000 for guidance), ε on a VP
schedule, learned-sigma output split off as in ``DiTPipeline``. The pipeline draws latents at the
transformer's sample size only and feeds them to the scheduler unscaled."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import Family


class DiT(Family):
    name, label = "dit", "DiT"
    pipeline_classes = ("DiTPipeline",)
    conditioning = "class"
    no_cfg_guidance_scale = 1.0
    scales_initial_noise = False
    null_label = 1000  # DiTPipeline's unconditional class

    @property
    def latent_multiple(self) -> int:
        return int(self.model.config.patch_size)

    def check_resolution(self) -> None:
        super().check_resolution()
        if (self.height, self.width) != self.default_resolution():
            raise ValueError(f"DiT samples at its transformer's size only ({self.default_resolution()}), "
                             f"got data.resolution {(self.height, self.width)}")

    @property
    def num_classes(self) -> int:
        labels = getattr(self.pipe, "labels", None) or {}
        return len(labels) if labels else self.null_label

    def encode(self, labels: list[int]) -> dict[str, Tensor]:
        return {"class_labels": torch.as_tensor(labels, dtype=torch.long)}

    def negative(self) -> dict[str, Tensor]:
        return self.encode([self.null_label])

    def call(self, model: nn.Module, sample: Tensor, timestep: Tensor, cond: dict[str, Tensor]) -> Tensor:
        out = model(sample.to(model.dtype), timestep=timestep, class_labels=cond["class_labels"]).sample
        channels = self.latent_channels
        if model.config.out_channels // 2 == channels:
            out = out[:, :channels]  # learned sigma
        return out

    def stock_call(self) -> dict[str, Any]:
        return {"num_inference_steps": 1, "guidance_scale": self.no_cfg_guidance_scale}
