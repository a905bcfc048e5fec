"""HiARPipeline: few-step causal autoregressive video from a ``CausalWanTransformer3DModel`` student.

The video is generated block by block over the HiAR cell grid (``hiar_cell``) in one of four
orders: ``sequential`` (Self-Forcing: each block fully denoised on a clean context),
``hierarchical`` (HiAR: step-first, the context at the block's own noise level), ``wavefront``
(hierarchical, with all independent cells of a slot batched into one forward) and ``pipelined``
(hierarchical across processes, one step per process; ``hiar_parallel``). hierarchical, wavefront
and pipelined give the same video for the same seed.

Conditioning is Wan's: ``encoder_hidden_states`` from a text encoder (``prompt``), given directly
(``prompt_embeds``), or from a :class:`LabelEmbeddingModel` (``labels``) for label-conditioned
testbed students.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.utils import BaseOutput
from diffusers.video_processor import VideoProcessor
from torch import Tensor

from fdistill.models.causal_wan import CausalWanTransformer3DModel
from fdistill.schedules import FlowMatchingSchedule, NoiseSchedule, schedule_from_scheduler
from fdistill.teachers import LabelEmbedding

from .diffusers_loading import SavesLoaderModule
from .hiar_cell import HiARPlan, NoiseBank, check_order, denoising_times, generate_video

__all__ = ["HiARPipeline", "HiARPipelineOutput", "LabelEmbeddingModel", "hiar_pipeline_from_teacher"]

OUTPUT_TYPES = ("np", "pil", "pt", "latent")


class LabelEmbeddingModel(ModelMixin, ConfigMixin):
    """Class label → ``encoder_hidden_states`` (B, num_tokens, dim), as a savable pipeline component.

    Wraps the teachers' :class:`~fdistill.teachers.LabelEmbedding` (same table, label
    ``num_classes`` = the null label). diffusers finds this module's ``ModelMixin`` by name when it
    loads the component, so ``save_pretrained`` / ``from_pretrained`` round-trip it.
    """

    @register_to_config
    def __init__(self, num_classes: int = 10, dim: int = 32, num_tokens: int = 1) -> None:
        super().__init__()
        self.embedding = LabelEmbedding(num_classes, dim, num_tokens)

    @classmethod
    def from_label_embedding(cls, embedding: LabelEmbedding) -> LabelEmbeddingModel:
        model = cls(**embedding.config())
        model.embedding.load_state_dict(embedding.state_dict())
        return model

    @property
    def null_label(self) -> int:
        return self.embedding.null_label

    def forward(self, labels: Tensor) -> Tensor:
        """labels: (B,) int64 → (B, num_tokens, dim)."""
        return self.embedding(labels)


@dataclass
class HiARPipelineOutput(BaseOutput):
    """frames: "np" (B, F, H, W, 3) floats in [0, 1] (``export_to_video(frames[0], path)`` works);
    "pil" a list of lists of images; "pt" (B, F, C, H, W) in [0, 1] with the model's own channels;
    "latent" the student's (B, C, F, H, W) latents."""

    frames: np.ndarray | Tensor | list


class HiARPipeline(SavesLoaderModule, DiffusionPipeline):
    r"""Few-step causal autoregressive video generation with a HiAR (or Self-Forcing) student.

    Components:
        transformer: the causal student (``CausalWanTransformer3DModel``).
        scheduler: ``FlowMatchEulerDiscreteScheduler``; its ``shift`` warps the denoising steps.
        vae: optional ``AutoencoderKLWan`` (or any VAE with ``scaling_factor``); without one the
            latents are the frames, in [-1, 1].
        text_encoder, tokenizer: optional, for ``prompt``.
        label_embedding: optional :class:`LabelEmbeddingModel`, for ``labels``.

    The student's defaults live in the config: ``frames_per_block``, ``denoising_steps``,
    ``context`` ("next" / "same"), ``renoise`` ("noise" / "ode"), and optional ``num_frames``,
    ``height``, ``width``.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["vae", "text_encoder", "tokenizer", "label_embedding"]

    def __init__(self, transformer, scheduler, vae=None, text_encoder=None, tokenizer=None, label_embedding=None,
                 frames_per_block: int = 1, denoising_steps: list[int] | None = None,
                 context: str = "next", renoise: str = "noise", num_frames: int | None = None,
                 height: int | None = None, width: int | None = None):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                              tokenizer=tokenizer, label_embedding=label_embedding)
        steps = [1000, 750, 500, 250] if denoising_steps is None else [int(t) for t in denoising_steps]
        self.register_to_config(frames_per_block=int(frames_per_block), denoising_steps=steps,
                                context=context, renoise=renoise, num_frames=num_frames, height=height, width=width)
        if _is_wan_vae(vae):  # as WanPipeline
            config = vae.config
            self.vae_scale_factor_spatial = config.get("scale_factor_spatial") or 2 ** len(config.temperal_downsample)
            self.vae_scale_factor_temporal = config.get("scale_factor_temporal") or 2 ** sum(config.temperal_downsample)
        else:
            self.vae_scale_factor_spatial = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
            self.vae_scale_factor_temporal = 1
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor_spatial)

    @property
    def schedule(self) -> NoiseSchedule:
        """The flow-matching schedule of the scheduler component (its ``shift``)."""
        return schedule_from_scheduler(self.scheduler)

    # -- conditioning ------------------------------------------------------------------
    def encode_prompt(self, prompt: str | list[str], device: torch.device, max_length: int = 512) -> Tensor:
        """Text-encoder hidden states, zero beyond each prompt's tokens (as Wan): (B, L, text_dim)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        length = min(max_length, self.tokenizer.model_max_length)
        inputs = self.tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        mask = inputs.attention_mask.to(device)
        hidden = self.text_encoder(inputs.input_ids.to(device), attention_mask=mask).last_hidden_state
        return hidden * mask[..., None].to(hidden.dtype)

    def _condition(self, prompt, prompt_embeds, labels, device) -> Tensor:
        given = [name for name, v in (("prompt", prompt), ("prompt_embeds", prompt_embeds), ("labels", labels))
                 if v is not None]
        if len(given) > 1:
            raise ValueError(f"pass one of prompt, prompt_embeds, labels; got {', '.join(given)}")
        dim = self.transformer.config.text_dim
        if prompt is not None:
            if self.tokenizer is None or self.text_encoder is None:
                raise ValueError("a prompt needs a tokenizer and a text_encoder; pass prompt_embeds instead")
            return self.encode_prompt(prompt, device)
        if prompt_embeds is not None:
            if prompt_embeds.ndim != 3 or prompt_embeds.shape[-1] != dim:
                raise ValueError(f"prompt_embeds must be (B, L, {dim}), got {tuple(prompt_embeds.shape)}")
            return prompt_embeds.to(device)
        if self.label_embedding is None:
            if labels is not None:
                raise ValueError("this pipeline has no label_embedding: pass prompt or prompt_embeds")
            raise ValueError("pass prompt (with a text encoder), prompt_embeds, or labels (with a label_embedding)")
        null = self.label_embedding.null_label
        labels = torch.as_tensor([null] if labels is None else labels).reshape(-1)
        if labels.is_floating_point() or ((labels < 0) | (labels > null)).any():
            raise ValueError(f"labels must be ints in [0, {null}] ({null}: unconditional), got {labels.tolist()}")
        return self.label_embedding(labels.long().to(device))

    # -- sampling ----------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_embeds: Tensor | None = None,
        labels: int | Sequence[int] | Tensor | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        denoising_steps: int | Sequence[int] | None = None,
        frames_per_block: int | None = None,
        order: str = "hierarchical",
        window: int | None = None,
        generator: torch.Generator | None = None,
        latents: Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        context: str | None = None,
        renoise: str | None = None,
        fused: bool = True,
        num_processes: int | None = None,
        attention_backend: str = "auto",
    ) -> HiARPipelineOutput | tuple:
        r"""Generate videos block by block.

        Args:
            prompt, prompt_embeds, labels: the condition (one of them; labels default to the null
                label when the pipeline has a label embedding). One video per prompt / embedding / label.
            num_frames: frames of the video (pixel frames with a Wan VAE, else latent frames); the
                latent frame count must be a multiple of ``frames_per_block``.
            height, width: frame size in pixels.
            denoising_steps: the student's steps, a list of timesteps in (0, 1000] such as
                [1000, 750, 500, 250] (warped by the scheduler's shift) or an int K.
            frames_per_block: latent frames per causal block (the student's, by default).
            order: "sequential", "hierarchical", "wavefront" or "pipelined".
            window: attention window in latent frames (rolling KV caches; None: all earlier frames).
            generator: seeds the noise bank (initial and re-noising noise); one generator.
            latents: (B, C, F_latent, h, w) initial noise instead of the bank's.
            output_type: "np", "pil", "pt" or "latent" (see :class:`HiARPipelineOutput`).
            return_dict: return a :class:`HiARPipelineOutput` rather than a tuple.
            context: context level of the step-first orders, "next" (t_{k+1}) or "same" (t_k).
            renoise: "noise" (fresh bank noise) or "ode" (DDIM step) between steps.
            fused: write each block's KV cache in the same forward as the next block's denoise.
            num_processes: processes of the "pipelined" order (default K; ignored under torchrun,
                where the process group decides).
            attention_backend: ``fdistill.kernels`` backend.
        """
        check_order(order)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not supported; valid: {', '.join(OUTPUT_TYPES)}")
        if isinstance(generator, list):
            raise ValueError("pass one torch.Generator: it seeds the noise bank shared by every cell")
        cfg = self.config
        fpb = frames_per_block or cfg.frames_per_block
        steps = cfg.denoising_steps if denoising_steps is None else denoising_steps
        num_frames, height, width = (v if v is not None else cfg[k] for k, v in
                                     (("num_frames", num_frames), ("height", height), ("width", width)))
        if num_frames is None or height is None or width is None:
            raise ValueError("pass num_frames, height and width (the pipeline config sets no default)")
        latent_frames = (num_frames - 1) // self.vae_scale_factor_temporal + 1 if _is_wan_vae(self.vae) else num_frames
        if latent_frames < 1 or latent_frames % fpb:
            raise ValueError(f"num_frames={num_frames} ({latent_frames} latent frames) is not a positive multiple of "
                             f"frames_per_block={fpb}")
        for name, size in (("height", height), ("width", width)):
            factor = self.vae_scale_factor_spatial * self.transformer.config.patch_size[1]
            if size < 1 or size % factor:
                raise ValueError(f"{name}={size} must be a positive multiple of {factor} (VAE factor × patch size)")

        device = self._execution_device
        condition = self._condition(prompt, prompt_embeds, labels, device).to(self.transformer.dtype)
        batch = condition.shape[0]
        h, w = height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial
        channels = self.transformer.config.in_channels
        shape = (batch, channels, latent_frames, h, w)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"latents of shape {tuple(latents.shape)} do not match the expected {shape}")

        schedule = self.schedule
        plan = HiARPlan(denoising_times(schedule, steps), latent_frames // fpb, fpb, window=window,
                        context=context or cfg.context, renoise=renoise or cfg.renoise, fused=fused,
                        attention_backend=attention_backend)
        in_group = order == "pipelined" and dist.is_available() and dist.is_initialized()
        seed = _seed(generator, device, broadcast=in_group)
        bank = NoiseBank(seed, (batch, channels, fpb, h, w), device, torch.float32, latents)

        if order == "pipelined":
            from .hiar_parallel import generate_video_in_group, generate_video_pipelined

            if in_group:
                with self.progress_bar(total=plan.num_blocks * plan.num_steps) as bar:
                    video = generate_video_in_group(self.transformer, schedule, plan, condition, bank, bar.update)
            else:
                video = generate_video_pipelined(self.transformer, schedule, plan, condition, bank, num_processes)
        else:
            with self.progress_bar(total=plan.num_blocks * plan.num_steps) as bar:
                video, _ = generate_video(self.transformer, schedule, plan, condition, bank, order, bar.update)

        frames = self._postprocess(video, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return HiARPipelineOutput(frames=frames)

    def _postprocess(self, latents: Tensor, output_type: str):
        if output_type == "latent":
            return latents.to(self.transformer.dtype)
        video = latents
        if self.vae is not None:
            config = self.vae.config
            if _is_wan_vae(self.vae):
                mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1).to(latents)
                std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1).to(latents)
                z = latents * std + mean
            else:
                z = latents / config.scaling_factor
            video = self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0].float()
        if output_type == "pt":
            return self.video_processor.postprocess_video(video, output_type="pt")
        if video.shape[1] == 1:  # single-channel testbed videos: grey RGB for export_to_video
            video = video.repeat(1, 3, 1, 1, 1)
        return self.video_processor.postprocess_video(video, output_type=output_type)


def _is_wan_vae(vae) -> bool:
    return vae is not None and "latents_mean" in vae.config and "temperal_downsample" in vae.config


def _seed(generator: torch.Generator | None, device: torch.device, broadcast: bool) -> int:
    """One 62-bit seed for the noise bank from ``generator`` (or the global RNG)."""
    gen_device = generator.device if generator is not None else "cpu"
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=gen_device)
    if broadcast:  # under torchrun every rank must draw the same bank
        seed = seed.to(device)
        dist.broadcast(seed, src=0)
    return int(seed.item())


def hiar_pipeline_from_teacher(path=None, frames_per_block: int = 2,
                               denoising_steps: Sequence[int] = (1000, 750, 500, 250),
                               context: str = "next") -> HiARPipeline:
    """A HiARPipeline around the moving-digits teacher's weights, loaded into the causal model.

    The teacher is bidirectional and many-step; used as a few-step block-causal student it gives
    poor videos. This is a smoke test of weights and plumbing until a distilled student exists.
    """
    from fdistill.teachers import load_moving_digits_teacher

    teacher = load_moving_digits_teacher(path, model_cls=CausalWanTransformer3DModel)
    schedule = teacher.schedule
    if not isinstance(schedule, FlowMatchingSchedule):
        raise ValueError(f"a HiAR student is a flow-matching model; this teacher uses {type(schedule).__name__}")
    size = teacher.metadata.get("data", {}).get("kwargs", {}).get("size")
    return HiARPipeline(
        transformer=teacher.model, scheduler=FlowMatchEulerDiscreteScheduler(shift=schedule.shift),
        label_embedding=LabelEmbeddingModel.from_label_embedding(teacher.label_embedding),
        frames_per_block=frames_per_block, denoising_steps=denoising_steps, context=context,
        height=size, width=size,
    )
