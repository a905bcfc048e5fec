"""Tiny pipelines of every teacher family, built in code (no hub), each with its public checkpoint's scheduler.

``tiny_pipeline(family)`` returns a diffusers pipeline of the family's own class whose components
have the classes and wiring of the real checkpoint at toy size (random weights, 16×16 or 32×32
images): ``sd`` (SD1.5, PNDM), ``sdxl`` (SDXL-base, EulerDiscrete "leading"), ``sd3`` (SD3-medium,
FlowMatchEuler shift 3), ``flux`` (Flux.1-dev, FlowMatchEuler with dynamic shifting), ``pixart``
(PixArt-Σ, DPM-Solver++) and ``dit`` (DiT-XL-2, DDIM). ``save_pretrained`` of the result is a folder
as the user's would be. The tokenizers are real CLIP and T5 tokenizers over small vocabularies.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from .tiny_sd import tiny_clip_tokenizer, tiny_sd_components

__all__ = ["PUBLIC_SCHEDULERS", "TINY_FAMILIES", "tiny_clip_encoder", "tiny_pipeline", "tiny_t5_encoder",
           "tiny_t5_tokenizer", "tiny_wan_pipeline"]

SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")

PUBLIC_SCHEDULERS: dict[str, tuple[str, dict]] = {
    "sd": ("PNDMScheduler", dict(SD_BETAS, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
                                 clip_sample=False)),
    "sdxl": ("EulerDiscreteScheduler", dict(SD_BETAS, interpolation_type="linear", prediction_type="epsilon",
                                            steps_offset=1, timestep_spacing="leading", use_karras_sigmas=False)),
    "sd3": ("FlowMatchEulerDiscreteScheduler", dict(num_train_timesteps=1000, shift=3.0)),
    "flux": ("FlowMatchEulerDiscreteScheduler", dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096,
                                                     max_shift=1.15, num_train_timesteps=1000, shift=3.0,
                                                     use_dynamic_shifting=True)),
    "pixart": ("DPMSolverMultistepScheduler", dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                                                   num_train_timesteps=1000, prediction_type="epsilon",
                                                   algorithm_type="dpmsolver++", solver_order=2,
                                                   lower_order_final=True)),
    "dit": ("DDIMScheduler", dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=False,
                                  num_train_timesteps=1000)),
}
"""The scheduler class and config of each family's public checkpoint (SD1.5, SDXL-base, SD3-medium,
FLUX.1-dev, PixArt-Σ, DiT-XL-2)."""

TINY_FAMILIES = tuple(PUBLIC_SCHEDULERS)

T5_WORDS = ("a an the of in on with and photo picture drawing image handwritten digit number zero one two three "
            "four five six seven eight nine cat dog bird car house tree red green blue black white small large").split()


def public_scheduler(family: str):
    import diffusers

    name, config = PUBLIC_SCHEDULERS[family]
    return getattr(diffusers, name).from_config(config)


def tiny_t5_tokenizer(words=T5_WORDS):
    """A T5 tokenizer (SentencePiece-style unigram, ``</s>`` appended, ``<pad>`` = 0) over ``words`` and letters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -5.0)]
    pieces += [("▁" + w, -1.0) for w in words]
    pieces += [(c, -10.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,'-"]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    with tempfile.TemporaryDirectory() as tmp:
        tok.save(str(Path(tmp) / "tokenizer.json"))
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512}))
        return T5TokenizerFast(tokenizer_file=str(Path(tmp) / "tokenizer.json"), eos_token="</s>",
                               pad_token="<pad>", unk_token="<unk>", extra_ids=0, model_max_length=512)


def tiny_clip_encoder(tokenizer, cls_name: str = "CLIPTextModel", hidden: int = 32, projection: int = 32):
    import transformers

    config = transformers.CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, projection_dim=projection,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return getattr(transformers, cls_name)(config).eval()


def tiny_t5_encoder(tokenizer, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=2,
                      relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(config).eval()


def _vae(latent_channels: int = 4, **kwargs):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=4, latent_channels=latent_channels, sample_size=16, **kwargs).eval()


def tiny_pipeline(family: str, seed: int = 0):
    """A tiny pipeline of ``family`` (one of :data:`TINY_FAMILIES`) with its public scheduler; random weights
    drawn from ``seed`` (the global RNG is restored afterwards)."""
    if family not in PUBLIC_SCHEDULERS:
        raise ValueError(f"unknown family {family!r}; valid: {', '.join(TINY_FAMILIES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _BUILDERS[family]()


def _sd():
    import diffusers

    parts = {**tiny_sd_components(), "scheduler": public_scheduler("sd")}
    return diffusers.StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)


def _sdxl():
    import diffusers

    tokenizer = tiny_clip_tokenizer()
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=1)
    return diffusers.StableDiffusionXLPipeline(
        vae=_vae(scaling_factor=0.13025), text_encoder=tiny_clip_encoder(tokenizer),
        text_encoder_2=tiny_clip_encoder(tokenizer, "CLIPTextModelWithProjection"), tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=unet.eval(), scheduler=public_scheduler("sdxl"))


def _sd3():
    import diffusers

    clip = tiny_clip_tokenizer(model_max_length=16)
    t5_tokenizer = tiny_t5_tokenizer()
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=64, caption_projection_dim=16, pooled_projection_dim=64, out_channels=16,
        pos_embed_max_size=8)
    return diffusers.StableDiffusion3Pipeline(
        transformer=transformer.eval(), scheduler=public_scheduler("sd3"),
        vae=_vae(16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=tiny_clip_encoder(clip, "CLIPTextModelWithProjection"), tokenizer=clip,
        text_encoder_2=tiny_clip_encoder(clip, "CLIPTextModelWithProjection"), tokenizer_2=clip,
        text_encoder_3=tiny_t5_encoder(t5_tokenizer, 64), tokenizer_3=t5_tokenizer)


def _flux():
    import diffusers

    clip = tiny_clip_tokenizer()
    t5_tokenizer = tiny_t5_tokenizer()
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True)
    return diffusers.FluxPipeline(
        transformer=transformer.eval(), scheduler=public_scheduler("flux"),
        vae=_vae(4, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=tiny_clip_encoder(clip), tokenizer=clip,
        text_encoder_2=tiny_t5_encoder(t5_tokenizer, 32), tokenizer_2=t5_tokenizer)


def _pixart():
    import diffusers

    t5_tokenizer = tiny_t5_tokenizer()
    transformer = diffusers.PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
    return diffusers.PixArtSigmaPipeline(
        transformer=transformer.eval(), scheduler=public_scheduler("pixart"), vae=_vae(4, scaling_factor=0.13025),
        text_encoder=tiny_t5_encoder(t5_tokenizer, 32), tokenizer=t5_tokenizer)


def _dit():
    import diffusers

    transformer = diffusers.DiTTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2, in_channels=4,
        out_channels=8, attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero", norm_elementwise_affine=False)
    return diffusers.DiTPipeline(transformer=transformer.eval(), vae=_vae(4, scaling_factor=0.18215),
                                 scheduler=public_scheduler("dit"), id2label={i: f"class {i}" for i in range(1000)})


_BUILDERS = {"sd": _sd, "sdxl": _sdxl, "sd3": _sd3, "flux": _flux, "pixart": _pixart, "dit": _dit}


def tiny_wan_pipeline(seed: int = 0):
    """A ``WanPipeline`` (Wan2.1 T2V layout) at toy size: a tiny UMT5 text encoder and T5 tokenizer, a tiny
    ``AutoencoderKLWan`` (8× spatial, 4× temporal), a 2-layer ``WanTransformer3DModel`` and Wan2.1's scheduler
    (``UniPCMultistepScheduler``, flow prediction, flow shift 3)."""
    import diffusers
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = tiny_t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37,
                                                   num_layers=2, num_heads=4, relative_attention_num_buckets=8)).eval()
        vae = diffusers.AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                         temperal_downsample=[False, True, True]).eval()
        transformer = diffusers.WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32).eval()
    scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                  flow_shift=3.0)
    return diffusers.WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                                 transformer=transformer)

