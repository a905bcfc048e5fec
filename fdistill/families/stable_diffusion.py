"""UNet teachers: Stable Diffusion 1.x/2.x and SDXL (ε or v prediction on a VP schedule)."""

from __future__ import annotations

from torch import Tensor, nn

from .base import Family


class StableDiffusion(Family):
    """SD1.x/2.x: one CLIP text encoder; the condition is its last hidden states (B, 77, D)."""

    name, label = "sd", "SD1.x/2.x"
    pipeline_classes = ("StableDiffusionPipeline",)
    denoiser_name = "unet"
    default_feature_modules = ("mid_block",)

    def _encode(self, prompts: list[str], negative: bool) -> tuple:
        device = self.model.device
        return self.pipe.encode_prompt(prompts, device, 1, negative, None)

    def encode(self, prompts: list[str]) -> dict[str, Tensor]:
        return {"prompt_embeds": self._encode(prompts, False)[0]}

    def negative(self) -> dict[str, Tensor]:
        return {"prompt_embeds": self._encode([""], True)[1]}

    def call(self, model: nn.Module, sample: Tensor, timestep: Tensor, cond: dict[str, Tensor]) -> Tensor:
        embeds = cond["prompt_embeds"].to(model.dtype)
        return model(sample.to(model.dtype), timestep, encoder_hidden_states=embeds, return_dict=False)[0]


class StableDiffusionXL(Family):
    """SDXL: two CLIP text encoders (hidden states concatenated), the second's pooled embedding and
    the ``time_ids`` micro-conditions (original size, crop, target size) as added conditions."""

    name, label = "sdxl", "SDXL"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    denoiser_name = "unet"
    default_feature_modules = ("mid_block",)

    def _encode(self, prompts: list[str], negative: bool) -> dict[str, Tensor]:
        embeds, neg, pooled, neg_pooled = self.pipe.encode_prompt(prompts, device=self.model.device,
                                                                  num_images_per_prompt=1,
                                                                  do_classifier_free_guidance=negative)
        if negative:
            embeds, pooled = neg, neg_pooled
        pipe = self.pipe
        projection = (int(pooled.shape[-1]) if pipe.text_encoder_2 is None
                      else pipe.text_encoder_2.config.projection_dim)
        size = (self.height, self.width)
        time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=embeds.dtype,
                                          text_encoder_projection_dim=projection)
        return {"prompt_embeds": embeds, "text_embeds": pooled,
                "time_ids": time_ids.to(embeds.device).repeat(len(prompts), 1)}

    def encode(self, prompts: list[str]) -> dict[str, Tensor]:
        return self._encode(prompts, False)

    def negative(self) -> dict[str, Tensor]:
        return self._encode([""], True)

    def call(self, model: nn.Module, sample: Tensor, timestep: Tensor, cond: dict[str, Tensor]) -> Tensor:
        dtype = model.dtype
        added = {"text_embeds": cond["text_embeds"].to(dtype), "time_ids": cond["time_ids"].to(dtype)}
        return model(sample.to(dtype), timestep, encoder_hidden_states=cond["prompt_embeds"].to(dtype),
                     added_cond_kwargs=added, return_dict=False)[0]
