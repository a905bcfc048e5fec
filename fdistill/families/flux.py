"""Flux.1: an MMDiT on flow matching over 2×2-packed latent tokens, with a guidance embedding.

Flux.1-dev is guidance-distilled: its guidance is an input of the network (``guidance_scale`` of
the stock call feeds the embedding), not a second, unconditional forward. The scheduler's dynamic
shifting (a shift that grows with the image's token count) is resolved at the training resolution
into one fixed shift, which the export writes into its scheduler.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from ..schedules import FlowMatchingSchedule, NoiseSchedule, schedule_from_scheduler
from .base import Family


def resolved_shift(scheduler, image_seq_len: int) -> float:
    """The fixed shift that equals ``scheduler``'s dynamic shift for ``image_seq_len`` tokens (FluxPipeline's μ)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    c = scheduler.config
    mu = calculate_shift(image_seq_len, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                         c.get("base_shift", 0.5), c.get("max_shift", 1.15))
    # σ' = e^μ / (e^μ + (1/σ − 1)) is the linear shift formula with shift e^μ ("linear": μ itself)
    return math.exp(mu) if c.get("time_shift_type", "exponential") == "exponential" else mu


class Flux(Family):
    name, label = "flux", "Flux.1"
    pipeline_classes = ("FluxPipeline",)
    latent_multiple = 2  # latents are packed in 2×2 patches
    max_sequence_length = 512  # the stock call's default T5 length

    @property
    def guidance(self) -> str:  # Flux.1-dev embeds its guidance; schnell takes none
        return "embedded" if self.model.config.guidance_embeds else "cfg"

    def default_resolution(self) -> tuple[int, int]:
        size = self.pipe.default_sample_size * self.vae_scale_factor
        return size, size

    @property
    def latent_channels(self) -> int:
        return int(self.model.config.in_channels) // 4

    @property
    def image_seq_len(self) -> int:
        _, h, w = self.sample_shape
        return (h // 2) * (w // 2)

    def make_schedule(self) -> NoiseSchedule:
        scheduler = self.pipe.scheduler
        if scheduler.config.get("use_dynamic_shifting", False):
            self.check_resolution()
            return FlowMatchingSchedule(shift=resolved_shift(scheduler, self.image_seq_len))
        return schedule_from_scheduler(scheduler)

    def export_base_scheduler(self):
        scheduler = self.pipe.scheduler
        if not scheduler.config.get("use_dynamic_shifting", False):
            return scheduler
        return type(scheduler).from_config(scheduler.config, use_dynamic_shifting=False, shift=self.schedule.shift)

    def encode(self, prompts: list[str]) -> dict[str, Tensor]:
        embeds, pooled, _ = self.pipe.encode_prompt(prompts, None, device=self.model.device, num_images_per_prompt=1,
                                                    max_sequence_length=self.max_sequence_length)
        return {"prompt_embeds": embeds, "pooled_projections": pooled}

    def negative(self) -> dict[str, Tensor]:
        return self.encode([""])

    def call(self, model: nn.Module, sample: Tensor, timestep: Tensor, cond: dict[str, Tensor]) -> Tensor:
        pipe, dtype = self.pipe, model.dtype
        b, c, h, w = sample.shape
        f = self.vae_scale_factor
        tokens = pipe._pack_latents(sample.to(dtype), b, c, h, w)
        img_ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, sample.device, dtype)
        embeds = cond["prompt_embeds"].to(dtype)
        txt_ids = embeds.new_zeros(embeds.shape[1], 3)
        guidance = None
        if model.config.guidance_embeds:
            guidance = timestep.new_full((b,), self.guidance_scale, dtype=sample.dtype)
        out = model(hidden_states=tokens, timestep=timestep / 1000, guidance=guidance,
                    pooled_projections=cond["pooled_projections"].to(dtype), encoder_hidden_states=embeds,
                    txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return pipe._unpack_latents(out, h * f, w * f, f)

    def image_tokens(self, output) -> Tensor:
        return output[1]  # dual and single blocks return (text tokens, image tokens)
