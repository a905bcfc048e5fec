"""PixArt-α and PixArt-Σ: a DiT with T5 cross-attention (and its attention mask), ε-prediction on a VP
schedule, and a learned-sigma output whose second half the pipeline drops."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from .base import Family

RESOLUTION_BINS = {"PixArtAlphaPipeline": (32, 64, 128), "PixArtSigmaPipeline": (32, 64, 128, 256)}
"""Transformer sample sizes whose aspect-ratio bins the pipelines know (``use_resolution_binning``)."""


class PixArt(Family):
    name, label = "pixart", "PixArt-α/Σ"
    pipeline_classes = ("PixArtAlphaPipeline", "PixArtSigmaPipeline")

    @property
    def latent_multiple(self) -> int:
        return int(self.model.config.patch_size)

    def _call_default(self, name: str) -> Any:
        return inspect.signature(type(self.pipe).__call__).parameters[name].default

    def _encode(self, prompts: list[str], negative: bool) -> dict[str, Tensor]:
        embeds, mask, neg, neg_mask = self.pipe.encode_prompt(
            prompts, do_classifier_free_guidance=negative, num_images_per_prompt=1, device=self.model.device,
            clean_caption=self._call_default("clean_caption"),
            max_sequence_length=self._call_default("max_sequence_length"))
        if negative:
            embeds, mask = neg, neg_mask
        return {"prompt_embeds": embeds, "attention_mask": mask}

    def encode(self, prompts: list[str]) -> dict[str, Tensor]:
        return self._encode(prompts, False)

    def negative(self) -> dict[str, Tensor]:
        return self._encode([""], True)

    def _added_conditions(self, batch: int, like: Tensor) -> dict[str, Tensor | None]:
        """PixArt-α at 1024² (sample size 128) conditions on resolution and aspect ratio; Σ on neither."""
        if type(self.pipe).__name__ != "PixArtAlphaPipeline" or self.model.config.sample_size != 128:
            return {"resolution": None, "aspect_ratio": None}
        resolution = torch.tensor([self.height, self.width]).repeat(batch, 1).to(like)
        aspect = torch.tensor([float(self.height / self.width)]).repeat(batch, 1).to(like)
        return {"resolution": resolution, "aspect_ratio": aspect}

    def call(self, model: nn.Module, sample: Tensor, timestep: Tensor, cond: dict[str, Tensor]) -> Tensor:
        dtype = model.dtype
        embeds = cond["prompt_embeds"].to(dtype)
        out = model(sample.to(dtype), encoder_hidden_states=embeds, encoder_attention_mask=cond["attention_mask"],
                    timestep=timestep, added_cond_kwargs=self._added_conditions(sample.shape[0], embeds),
                    return_dict=False)[0]
        if model.config.out_channels // 2 == self.latent_channels:
            out = out.chunk(2, dim=1)[0]  # learned sigma: the pipeline keeps the first half
        return out

    def step_x0(self, scheduler, output: Tensor, timestep: Tensor, sample: Tensor) -> Tensor:
        return scheduler.step(output, timestep, sample, return_dict=False)[1]  # the pipeline's one-step rule

    def stock_call(self) -> dict[str, Any]:
        call = super().stock_call()
        bins = RESOLUTION_BINS.get(type(self.pipe).__name__, ())
        if self.model.config.sample_size not in bins or "height" in call:
            call["use_resolution_binning"] = False  # binning would move a size the pipeline has no bin for
        return call
