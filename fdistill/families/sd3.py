"""Stable Diffusion 3 / 3.5: an MMDiT on flow matching with a fixed ``shift``.

Three text encoders: CLIP-L and CLIP-G (hidden states concatenated, pooled embeddings concatenated
into ``pooled_projections``) and T5 (joined to the CLIP tokens in one sequence); a folder without T5
(``text_encoder_3`` absent) gets zeros in its place, as in the pipeline. The network's timestep is
1000·σ; its output is the flow v = ε − x0.
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import Family


class StableDiffusion3(Family):
    name, label = "sd3", "SD3"
    pipeline_classes = ("StableDiffusion3Pipeline",)

    max_sequence_length = 256  # the stock call's default: T5 tokens are padded to it

    @property
    def latent_multiple(self) -> int:  # latents must tile into patches
        return int(self.model.config.patch_size)

    def _encode(self, prompts: list[str], negative: bool) -> dict[str, Tensor]:
        embeds, neg, pooled, neg_pooled = self.pipe.encode_prompt(
            prompts, None, None, device=self.model.device, num_images_per_prompt=1,
            do_classifier_free_guidance=negative, max_sequence_length=self.max_sequence_length)
        if negative:
            embeds, pooled = neg, neg_pooled
        return {"prompt_embeds": embeds, "pooled_projections": pooled}

    def encode(self, prompts: list[str]) -> dict[str, Tensor]:
        return self._encode(prompts, False)

    def negative(self) -> dict[str, Tensor]:
        return self._encode([""], True)

    def call(self, model: nn.Module, sample: Tensor, timestep: Tensor, cond: dict[str, Tensor]) -> Tensor:
        dtype = model.dtype
        return model(hidden_states=sample.to(dtype), timestep=timestep,
                     encoder_hidden_states=cond["prompt_embeds"].to(dtype),
                     pooled_projections=cond["pooled_projections"].to(dtype), return_dict=False)[0]

    def image_tokens(self, output) -> Tensor:
        return output[1]  # a joint block returns (text tokens, image tokens)
