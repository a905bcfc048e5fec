"""HiARPipeline: few-step causal autoregressive video from a ``CausalWanTransformer3DModel`` student.

The video is generated block by block over the HiAR cell grid (``fdistill.models.hiar_cell``) in one of four
orders: ``sequential`` (Self-Forcing: each block fully denoised on a clean context),
``hierarchical`` (HiAR: step-first, the context at the block's own noise level), ``wavefront``
(hierarchical, with all independent cells of a slot batched into one forward) and ``pipelined``
(hierarchical across processes, one step per process; ``hiar_parallel``). hierarchical, wavefront
and pipelined give the same video for the same seed.

Conditioning is Wan's: ``encoder_hidden_states`` from a text encoder (``prompt``), given directly
(``prompt_embeds``), or from a :class:`LabelEmbeddingModel` (``labels``) for label-conditioned
testbed students. Classifier-free guidance (``guidance_scale`` w ≠ 1) runs the conditional and the
unconditional branch as one batch, each with its own KV caches, and combines the outputs as
uncond + w (cond − uncond); the unconditional condition is the null label or the negative prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import PIL.Image
import torch
import torch.distributed as dist
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ModelMixin
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.utils import BaseOutput, logging
from diffusers.video_processor import VideoProcessor
from torch import Tensor

from fdistill.models.causal_wan import CacheForward, CausalWanTransformer3DModel
from fdistill.models.hiar_cell import (
    CONTEXTS,
    RENOISE_MODES,
    HiARCells,
    HiARPlan,
    NoiseBank,
    cell_waves,
    check_order,
    check_sink_frames,
    denoising_times,
    run_cells,
)
from fdistill.schedules import FlowMatchingSchedule, NoiseSchedule, schedule_from_scheduler
from fdistill.teachers import LabelEmbedding

from .diffusers_loading import SavesLoaderModule
from .prompts import negative_prompts

__all__ = ["HiARPipeline", "HiARPipelineOutput", "LabelEmbeddingModel", "hiar_pipeline_from_teacher"]

logger = logging.get_logger(__name__)

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

    The defaults the student was built for live in the config and are saved with it, so that
    ``pipe()`` and ``fdistill sample-video folder`` reproduce them (call arguments override):
    ``num_frames``, ``height``, ``width`` (None: the call must pass them), ``frames_per_block``,
    ``denoising_steps``, ``window``, ``sink_frames``, ``order``, ``guidance_scale``, ``context`` ("next" /
    "same") and ``renoise`` ("noise" / "ode").

    ``callback_on_step_end(pipe, i, t, callback_kwargs)`` runs after every cell (k, b), the unit
    the progress bar counts (``num_timesteps`` = N blocks · K steps calls, in the order's run
    order); see ``__call__``.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["vae", "text_encoder", "tokenizer", "label_embedding"]
    _callback_tensor_inputs = ["latents"]

    def __init__(self, transformer, scheduler, vae=None, text_encoder=None, tokenizer=None, label_embedding=None,
                 frames_per_block: int = 1, denoising_steps: list[int] | None = None,
                 context: str = "next", renoise: str = "noise", num_frames: int | None = None,
                 height: int | None = None, width: int | None = None, window: int | None = None,
                 order: str = "hierarchical", guidance_scale: float = 1.0, sink_frames: int = 0):
        super().__init__()
        check_order(order)
        if frames_per_block < 1:
            raise ValueError(f"frames_per_block must be >= 1, got {frames_per_block}")
        for name, value, valid in (("context", context, CONTEXTS), ("renoise", renoise, RENOISE_MODES)):
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
        check_sink_frames(sink_frames, window, frames_per_block)
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                              tokenizer=tokenizer, label_embedding=label_embedding)
        steps = [1000, 750, 500, 250] if denoising_steps is None else [int(t) for t in denoising_steps]
        self.register_to_config(frames_per_block=int(frames_per_block), denoising_steps=steps,
                                context=context, renoise=renoise, num_frames=num_frames, height=height, width=width,
                                window=None if window is None else int(window), order=order,
                                guidance_scale=float(guidance_scale), sink_frames=int(sink_frames))
        self._guidance_scale, self._num_timesteps = float(guidance_scale), 0
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

    @property
    def guidance_scale(self) -> float:
        """w of the running call (a ``callback_on_step_end`` may change ``_guidance_scale``)."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """w ≠ 1 (w = 1: the conditional model alone, as ``fdistill.denoisers.Denoiser``)."""
        return self._guidance_scale != 1.0

    @property
    def num_timesteps(self) -> int:
        """Callback calls of the last call: its N · K cells."""
        return self._num_timesteps

    # -- conditioning ------------------------------------------------------------------
    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        num_videos_per_prompt: int = 1,
        prompt_embeds: Tensor | None = None,
        negative_prompt_embeds: Tensor | None = None,
        max_sequence_length: int = 512,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Text-encoder hidden states, as ``WanPipeline.encode_prompt``: (prompt_embeds, negative_prompt_embeds).

        Each is (B · num_videos_per_prompt, L, text_dim), zero beyond each prompt's tokens, a prompt's
        videos consecutive. With ``do_classifier_free_guidance`` the negative embeddings encode
        ``negative_prompt`` ("" by default) unless given; otherwise they are returned as given.
        ``device`` defaults to the pipeline's execution device.
        """
        device = device or self._execution_device
        prompt = [prompt] if isinstance(prompt, str) else prompt
        if prompt is None and prompt_embeds is None:
            raise ValueError("pass prompt or prompt_embeds")
        batch_size = len(prompt) if prompt is not None else prompt_embeds.shape[0]
        if prompt_embeds is None:
            prompt_embeds = self._text_embeds(prompt, max_sequence_length, device, "prompt")
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative = negative_prompts(negative_prompt, batch_size)
            negative_prompt_embeds = self._text_embeds(negative, max_sequence_length, device, "negative_prompt")
        dtype = dtype or (self.text_encoder.dtype if self.text_encoder is not None else prompt_embeds.dtype)
        prompt_embeds = prompt_embeds.to(device, dtype).repeat_interleave(num_videos_per_prompt, dim=0)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(device, dtype).repeat_interleave(num_videos_per_prompt,
                                                                                                dim=0)
        return prompt_embeds, negative_prompt_embeds

    def _text_embeds(self, prompts: list[str], max_sequence_length: int, device: torch.device, what: str) -> Tensor:
        """(len(prompts), L, text_dim) hidden states, zero beyond each prompt's tokens (as Wan)."""
        if self.tokenizer is None or self.text_encoder is None:
            raise ValueError(f"encoding the {what} needs a tokenizer and a text_encoder; pass {what}_embeds instead")
        length = min(max_sequence_length, self.tokenizer.model_max_length)
        inputs = self.tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        mask = inputs.attention_mask.to(device)
        hidden = self.text_encoder(inputs.input_ids.to(device), attention_mask=mask).last_hidden_state
        return hidden * mask[..., None].to(hidden.dtype)

    def _labels(self, labels) -> Tensor:
        """labels as (B,) int64 (default: the null label); raises on labels outside [0, null]."""
        null = self.label_embedding.null_label
        labels = torch.as_tensor([null] if labels is None else labels).reshape(-1)
        if labels.is_floating_point() or ((labels < 0) | (labels > null)).any():
            raise ValueError(f"labels must be ints in [0, {null}] ({null}: unconditional), got {labels.tolist()}")
        return labels.long()

    def _conditions(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, labels,
                    num_videos_per_prompt: int, guided: bool, max_sequence_length: int,
                    device: torch.device) -> tuple[Tensor, Tensor | None]:
        """The transformer's ``encoder_hidden_states`` (B, L, text_dim) and, when guiding, the
        unconditional ones (the null label's, or the negative prompt's); B counts every video."""
        n = num_videos_per_prompt
        if prompt is None and prompt_embeds is None:
            labels = self._labels(labels).to(device)
            embed = self.label_embedding
            null = embed(torch.full_like(labels, embed.null_label)).repeat_interleave(n, 0) if guided else None
            return embed(labels).repeat_interleave(n, 0), null
        if (guided and negative_prompt is None and negative_prompt_embeds is None and self.text_encoder is None
                and self.label_embedding is not None):  # embeddings of a label-conditioned student
            cond, _ = self.encode_prompt(None, None, False, n, prompt_embeds, device=device)
            null = self.label_embedding(torch.tensor([self.label_embedding.null_label], device=device))
            return cond, null.expand(cond.shape[0], -1, -1).to(cond.dtype)
        cond, null = self.encode_prompt(prompt, negative_prompt, guided, n, prompt_embeds, negative_prompt_embeds,
                                        max_sequence_length, device)
        return cond, null if guided else None

    def check_inputs(
        self,
        prompt,
        negative_prompt,
        height,
        width,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        callback_on_step_end_tensor_inputs=None,
        labels=None,
        num_frames=None,
        order: str = "hierarchical",
        output_type: str = "np",
        num_videos_per_prompt: int = 1,
        generator=None,
        guidance_scale: float = 1.0,
        callback_on_step_end=None,
        frames_per_block: int = 1,
    ) -> None:
        """Raise a ValueError naming the bad value and the valid ones (WanPipeline's checks, then HiAR's)."""
        if callback_on_step_end_tensor_inputs is not None:
            bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            if bad:
                raise ValueError(f"callback_on_step_end_tensor_inputs {bad} are not available; valid: "
                                 f"{', '.join(self._callback_tensor_inputs)}")
        given = [name for name, v in (("prompt", prompt), ("prompt_embeds", prompt_embeds), ("labels", labels))
                 if v is not None]
        if len(given) > 1:
            raise ValueError(f"pass one of prompt, prompt_embeds, labels; got {', '.join(given)}")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass either negative_prompt or negative_prompt_embeds, not both")
        for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if value is not None and not isinstance(value, str | list):
                raise ValueError(f"{name} must be a str or a list of str, got {type(value).__name__}")
        if prompt is not None and (self.tokenizer is None or self.text_encoder is None):
            raise ValueError("a prompt needs a tokenizer and a text_encoder; pass prompt_embeds instead")
        dim = self.transformer.config.text_dim
        for name, value in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
            if value is not None and (value.ndim != 3 or value.shape[-1] != dim):
                raise ValueError(f"{name} must be (B, L, {dim}), got {tuple(value.shape)}")
        if prompt is None and prompt_embeds is None:
            if self.label_embedding is None:
                if labels is not None:
                    raise ValueError("this pipeline has no label_embedding: pass prompt or prompt_embeds")
                raise ValueError("pass prompt (with a text encoder), prompt_embeds, or labels (with a label_embedding)")
            if negative_prompt is not None or negative_prompt_embeds is not None:
                raise ValueError("labels guide against the null label: negative_prompt(_embeds) apply to prompts")
            self._labels(labels)
        check_order(order)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not supported; valid: {', '.join(OUTPUT_TYPES)}")
        if isinstance(generator, list):
            raise ValueError("pass one torch.Generator: it seeds the noise bank shared by every cell")
        if num_videos_per_prompt < 1:
            raise ValueError(f"num_videos_per_prompt must be >= 1, got {num_videos_per_prompt}")
        if order == "pipelined" and (guidance_scale != 1.0 or callback_on_step_end is not None):
            raise ValueError("order='pipelined' runs its cells in other processes: guidance_scale != 1 and "
                             "callback_on_step_end need a single-process order (sequential, hierarchical, wavefront)")
        for name, value in (("num_frames", num_frames), ("frames_per_block", frames_per_block)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        factor = self.vae_scale_factor_spatial * self.transformer.config.patch_size[1]
        for name, size in (("height", height), ("width", width)):
            if size < 1 or size % factor:
                raise ValueError(f"{name}={size} must be a positive multiple of {factor} (VAE factor × patch size)")

    # -- latents -------------------------------------------------------------------------
    def _latent_frames(self, num_frames: int) -> int:
        """Latent frames of ``num_frames`` pixel frames (a Wan VAE keeps the first, then 1 per 4)."""
        return (num_frames - 1) // self.vae_scale_factor_temporal + 1

    def _round_num_frames(self, num_frames: int, frames_per_block: int) -> int:
        """``num_frames`` as generated, with a warning when it changes: first to 4k + 1 for a Wan VAE
        (k = num_frames // 4, as WanPipeline), then up to whole blocks of ``frames_per_block`` latent
        frames (a causal student only generates whole blocks; up, so the video is never shorter)."""
        t = self.vae_scale_factor_temporal
        if t > 1 and num_frames % t != 1:
            rounded = num_frames // t * t + 1
            logger.warning(f"`num_frames - 1` has to be divisible by {t} (the VAE's temporal factor): "
                           f"num_frames={num_frames} rounded to {rounded}, as WanPipeline does")
            num_frames = rounded
        latent = self._latent_frames(num_frames)
        if latent % frames_per_block:
            blocks = -(-latent // frames_per_block)
            rounded = (blocks * frames_per_block - 1) * t + 1
            logger.warning(f"num_frames={num_frames} ({latent} latent frames) is not a whole number of blocks of "
                           f"frames_per_block={frames_per_block}: rounded up to {rounded} ({blocks} blocks)")
            num_frames = rounded
        return num_frames

    def prepare_latents(
        self,
        batch_size: int,
        num_channels_latents: int,
        height: int,
        width: int,
        num_frames: int,
        frames_per_block: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
        generator: torch.Generator | None = None,
        latents: Tensor | None = None,
        broadcast: bool = False,
    ) -> NoiseBank:
        """The noise of a HiAR video: a :class:`NoiseBank` seeded from ``generator``.

        The bank draws block b's initial noise and each cell's re-noising noise, (B, C,
        frames_per_block, h, w) each, on demand and identically in every order and process;
        ``latents`` (B, C, F_latent, h, w) replace the initial draws. ``num_frames``: pixel frames (as
        WanPipeline's). ``broadcast``: share rank 0's seed with the process group (torchrun).
        """
        device = device or self._execution_device
        h, w = height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial
        shape = (batch_size, num_channels_latents, self._latent_frames(num_frames), h, w)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"latents of shape {tuple(latents.shape)} do not match the expected {shape}")
        seed = _seed(generator, device, broadcast)
        return NoiseBank(seed, (batch_size, num_channels_latents, frames_per_block, h, w), device, dtype, latents)

    # -- sampling ----------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        latents: Tensor | None = None,
        prompt_embeds: Tensor | None = None,
        negative_prompt_embeds: Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict] | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        max_sequence_length: int = 512,
        labels: int | Sequence[int] | Tensor | None = None,
        denoising_steps: Sequence[int] | int | None = None,
        frames_per_block: int | None = None,
        order: str | None = None,
        window: int | None = None,
        sink_frames: int | None = None,
        context: str | None = None,
        renoise: str | None = None,
        fused: bool = True,
        num_processes: int | None = None,
        attention_backend: str = "auto",
        video: Tensor | np.ndarray | PIL.Image.Image | list[PIL.Image.Image] | None = None,
    ) -> HiARPipelineOutput | tuple:
        r"""Generate videos block by block. Arguments left at None take the pipeline config's value.

        Args:
            prompt, prompt_embeds, labels: the condition (one of them; labels default to the null
                label when the pipeline has a label embedding).
            negative_prompt, negative_prompt_embeds: the unconditional branch of a prompt's guidance
                (default: the empty prompt; for label embeddings without a text encoder, the null label).
            height, width: frame size in pixels.
            num_frames: frames of the video (pixel frames with a Wan VAE, else latent frames). Rounded,
                with a warning, to 4k + 1 for a Wan VAE (as WanPipeline), then up to whole blocks.
            num_inference_steps: K, the student's steps on the schedule's grid (``sampling_times(K)``);
                or give ``denoising_steps``, not both.
            guidance_scale: classifier-free guidance w (1: conditional only; 0: unconditional only).
            num_videos_per_prompt: videos per prompt / embedding / label, each with its own noise.
            generator: seeds the noise bank (initial and re-noising noise); one generator.
            latents: (B, C, F_latent, h, w) initial noise instead of the bank's.
            output_type: "np", "pil", "pt" or "latent" (see :class:`HiARPipelineOutput`).
            return_dict: return a :class:`HiARPipelineOutput` rather than a tuple.
            callback_on_step_end: ``callback(pipe, i, t, callback_kwargs) -> dict`` after every cell
                (k, b) (i: its index in the run order, t: its timestep t_k in model units).
                ``callback_kwargs["latents"]`` is block b's latents after the cell, (B, C,
                frames_per_block, h, w): x_b^{k+1}, the input of its next step, or at k = K − 1 its
                finished x̂0. A returned "latents" replaces them (copied in place, so the KV cache
                written from them sees the same values). Single-process orders only.
            callback_on_step_end_tensor_inputs: keys of ``callback_kwargs``: "latents".
            max_sequence_length: text tokens per prompt.
            denoising_steps: the student's timesteps in (0, 1000] such as [1000, 750, 500, 250]
                (warped by the scheduler's shift), or an int K.
            frames_per_block: latent frames per causal block.
            order: "sequential", "hierarchical", "wavefront" or "pipelined".
            window: attention window in latent frames (rolling KV caches; None in the config: all
                earlier frames, as does any window at least the video's length).
            sink_frames: an attention sink: the video's first ``sink_frames`` latent frames stay in the
                rolling window for good, shown just before its other frames (0: none; needs a window of more
                than ``sink_frames + frames_per_block`` frames; runs unfused).
            context: context level of the step-first orders, "next" (t_{k+1}) or "same" (t_k).
            renoise: "noise" (fresh bank noise) or "ode" (DDIM step) between steps.
            fused: write each block's KV cache in the same forward as the next block's denoise.
            num_processes: processes of the "pipelined" order (default K; ignored under torchrun,
                where the process group decides).
            attention_backend: ``fdistill.kernels`` backend.
            video: a clip to continue (video-to-video; image-to-video with one frame): (F, C, H, W)
                in [0, 1] as ``output_type="pt"`` returns one video, a PIL image or a list of them.
                It is resized to height × width (default: its own size), encoded, and written into
                every KV cache as clean context (:class:`~fdistill.models.hiar_cell.HiARCells`
                ``prefix``); the output holds the ``num_frames`` frames after it, not the clip
                itself. Every order supports it; every video of the batch continues the clip, or
                (B, F, C, H, W) gives each of the B videos its own.
        """
        cfg = self.config
        if video is not None:
            video = self._video_frames(video)
            height = video.shape[-2] if height is None and cfg.height is None else height
            width = video.shape[-1] if width is None and cfg.width is None else width
        num_frames, height, width = (cfg[k] if v is None else v for k, v in
                                     (("num_frames", num_frames), ("height", height), ("width", width)))
        missing = [k for k, v in (("num_frames", num_frames), ("height", height), ("width", width)) if v is None]
        if missing:
            names = missing[0] if len(missing) == 1 else f"{', '.join(missing[:-1])} and {missing[-1]}"
            raise ValueError(f"pass {names} (the pipeline config sets no default)")
        if num_inference_steps is not None and denoising_steps is not None:
            raise ValueError("pass num_inference_steps (a step count K) or denoising_steps (timesteps), not both")
        steps = num_inference_steps if num_inference_steps is not None else denoising_steps
        steps = cfg.denoising_steps if steps is None else steps
        order = cfg.order if order is None else order
        window = cfg.window if window is None else window
        sink = cfg.get("sink_frames", 0) if sink_frames is None else int(sink_frames)
        fpb = cfg.frames_per_block if frames_per_block is None else frames_per_block
        self._guidance_scale = cfg.guidance_scale if guidance_scale is None else float(guidance_scale)
        if isinstance(callback_on_step_end, PipelineCallback | MultiPipelineCallbacks):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        self.check_inputs(prompt, negative_prompt, height, width, prompt_embeds, negative_prompt_embeds,
                          callback_on_step_end_tensor_inputs, labels, num_frames, order, output_type,
                          num_videos_per_prompt, generator, self._guidance_scale, callback_on_step_end, fpb)
        num_frames = self._round_num_frames(num_frames, fpb)
        if video is None and window is not None and self._latent_frames(num_frames) <= window:
            sink = 0  # the window never moves: the sink is in it anyway (and the fused path stays)

        device = self._execution_device
        guided = self.do_classifier_free_guidance
        condition, null = self._conditions(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, labels,
                                           num_videos_per_prompt, guided, max_sequence_length, device)
        if null is not None:
            if null.shape != condition.shape:
                raise ValueError(f"negative_prompt_embeds {tuple(null.shape)} must match prompt_embeds "
                                 f"{tuple(condition.shape)}: both branches run as one batch")
            condition = torch.cat([condition, null])  # rows [cond; uncond], split again by _GuidedCells
        condition = condition.to(self.transformer.dtype)
        in_group = order == "pipelined" and dist.is_available() and dist.is_initialized()
        bank = self.prepare_latents(condition.shape[0] // (2 if guided else 1), self.transformer.config.in_channels,
                                    height, width, num_frames, fpb, device=device, generator=generator,
                                    latents=latents, broadcast=in_group)
        schedule = self.schedule
        plan = HiARPlan(denoising_times(schedule, steps), self._latent_frames(num_frames) // fpb, fpb, window=window,
                        sink_frames=sink, context=context or cfg.context, renoise=renoise or cfg.renoise,
                        fused=fused and not sink,
                        attention_backend=attention_backend)
        self._num_timesteps = plan.num_blocks * plan.num_steps
        prefix = None if video is None else self.encode_video(video, height, width, device)
        if prefix is not None and prefix.shape[0] not in (1, bank.block_shape[0]):
            raise ValueError(f"video holds {prefix.shape[0]} clips for {bank.block_shape[0]} videos: pass one clip "
                             "(every video continues it) or one per video")

        if order == "pipelined":
            from .hiar_parallel import generate_video_in_group, generate_video_pipelined

            if in_group:
                with self.progress_bar(total=self._num_timesteps) as bar:
                    video = generate_video_in_group(self.transformer, schedule, plan, condition, bank, bar.update,
                                                    prefix=prefix)
            else:
                video = generate_video_pipelined(self.transformer, schedule, plan, condition, bank, num_processes,
                                                 prefix=prefix)
        else:
            video = self._run_cells(schedule, plan, condition, bank, order, guided, callback_on_step_end,
                                    callback_on_step_end_tensor_inputs, prefix)

        frames = self._postprocess(video, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return HiARPipelineOutput(frames=frames)

    def _run_cells(self, schedule: NoiseSchedule, plan: HiARPlan, condition: Tensor, bank: NoiseBank, order: str,
                   guided: bool, callback, tensor_inputs: Sequence[str], prefix: Tensor | None = None) -> Tensor:
        """Latents (B, C, N·F, h, w) of a single-process order, with the callback after every cell."""
        blocks: dict[int, Tensor] = {}
        args = (self.transformer, schedule, plan, condition, bank)
        kwargs = dict(clean_context=order == "sequential", on_block=blocks.__setitem__, prefix=prefix)
        cells = (_GuidedCells(*args, guidance_scale=lambda: self._guidance_scale, **kwargs) if guided
                 else HiARCells(*args, **kwargs))
        waves = cell_waves(order, plan.num_blocks, plan.num_steps)
        run_order = enumerate(cell for wave in waves for cell in wave)  # the cells as run_cells finishes them

        with self.progress_bar(total=self._num_timesteps) as bar:
            def on_cell() -> None:
                i, (k, b) = next(run_order)
                if callback is not None:
                    last = k + 1 == plan.num_steps
                    x = blocks[b] if last else cells.take(k + 1, b)
                    t = schedule.model_time(torch.tensor(plan.times[k], dtype=torch.float32))
                    out = callback(self, i, t, {"latents": x} if "latents" in tensor_inputs else {})
                    new = out.pop("latents", x)
                    if new is not x:
                        if new.shape != x.shape:
                            raise ValueError(f"callback_on_step_end returned latents {tuple(new.shape)} for a "
                                             f"block of shape {tuple(x.shape)}")
                        x.copy_(new)
                    if not last:
                        cells.put(k + 1, b, x)
                bar.update()

            run_cells(cells, waves, on_cell)
        return torch.cat([blocks[b] for b in range(plan.num_blocks)], dim=2)

    # -- continuation ------------------------------------------------------------------
    def _video_frames(self, video) -> Tensor:
        """Clips as (B or 1, C, F, H, W) in [-1, 1] with the model's channels (grey ↔ RGB as needed)."""
        if isinstance(video, PIL.Image.Image):
            video = [video]
        if isinstance(video, list) and video and all(isinstance(v, PIL.Image.Image) for v in video):
            video = [v.convert("RGB") for v in video]
        elif isinstance(video, Tensor | np.ndarray):
            if video.ndim not in (4, 5) or min(video.shape) < 1:
                raise ValueError(f"video must be one clip (F, C, H, W) in [0, 1] (as output_type='pt' returns one "
                                 f"video; (B, F, C, H, W): one per video), a PIL image or a list of them; got shape "
                                 f"{tuple(video.shape)}")
            if isinstance(video, Tensor):
                if video.shape[-3] not in (1, 3):
                    raise ValueError(f"video must be (F, C, H, W) with C = 1 or 3 channels, got {tuple(video.shape)}")
                if not torch.isfinite(video).all() or video.min() < 0 or video.max() > 1:
                    raise ValueError("video frames must be finite values in [0, 1] (as output_type='pt' returns)")
                video = video.float()
        else:
            raise ValueError(f"video must be a tensor (F, C, H, W) in [0, 1], a PIL image or a list of PIL images; "
                             f"got {type(video).__name__}")
        frames = self.video_processor.preprocess_video(video)  # (1, C, F, H, W) in [-1, 1]
        channels = self.vae.config.get("in_channels", 3) if self.vae is not None else self.transformer.config.in_channels
        if frames.shape[1] != channels:
            frames = frames.mean(1, keepdim=True).expand(-1, channels, -1, -1, -1)  # grey, or grey as RGB
        return frames

    def encode_video(self, frames: Tensor, height: int, width: int, device: torch.device) -> Tensor:
        """Clean latents (B or 1, C, P, h, w) of clips from ``_video_frames`` (resized to height × width):
        the VAE's (normalised as ``_postprocess`` undoes it) or, without a VAE, the frames themselves.
        A Wan VAE keeps the clip's last 4k + 1 frames (its temporal grid)."""
        if tuple(frames.shape[-2:]) != (height, width):
            b, c, f = frames.shape[:3]
            frames = torch.nn.functional.interpolate(frames.transpose(1, 2).flatten(0, 1), size=(height, width),
                                                     mode="bilinear", antialias=True, align_corners=False)
            frames = frames.unflatten(0, (b, f)).transpose(1, 2)
        frames = frames.to(device)
        if self.vae is None:
            return frames
        t = self.vae_scale_factor_temporal
        if t > 1:
            frames = frames[:, :, -((frames.shape[2] - 1) // t * t + 1):]
        z = self.vae.encode(frames.to(self.vae.dtype)).latent_dist.mode().float()
        config = self.vae.config
        if _is_wan_vae(self.vae):
            mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1).to(z)
            std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1).to(z)
            return (z - mean) / std
        return z * config.scaling_factor

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

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> HiARPipeline:
        """diffusers' ``from_pretrained``; a stock Wan2.1 folder loads too, with the causal transformer and
        its scheduler's flow-matching shift (:mod:`~fdistill.pipelines.wan_loading`)."""
        from .wan_loading import wan_components

        return super().from_pretrained(pretrained_model_name_or_path,
                                       **wan_components(pretrained_model_name_or_path, kwargs))


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


class _GuidedCells(HiARCells):
    """HiAR cells with classifier-free guidance.

    ``condition`` holds 2B rows, [cond; uncond]. Every forward runs both branches as one batch (the
    cell latents twice), so each KV cache holds both branches' keys and values, and returns
    uncond + w (cond − uncond) for the B cell latents: x̂0 and everything after it see one video.
    ``guidance_scale()`` gives w at each forward, so a step-end callback may change it.
    """

    def __init__(self, *args, guidance_scale: Callable[[], float], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.guidance_scale = guidance_scale

    def forward(self, forwards: Sequence[CacheForward]) -> list[Tensor]:
        doubled = [replace(fw, x=torch.cat([fw.x, fw.x]), t=torch.cat([fw.t, fw.t])) for fw in forwards]
        w = self.guidance_scale()
        return [uncond + w * (cond - uncond) for cond, uncond in (out.chunk(2) for out in super().forward(doubled))]


def hiar_pipeline_from_teacher(path=None, frames_per_block: int = 2,
                               denoising_steps: Sequence[int] = (1000, 750, 500, 250),
                               context: str = "next", window: int | None = None, order: str = "hierarchical",
                               guidance_scale: float = 1.0) -> HiARPipeline:
    """A HiARPipeline around the moving-digits teacher's weights, loaded into the causal model.

    Its config records the teacher's clip (``num_frames``, ``height``, ``width`` from the training
    data in the teacher's metadata) and the other arguments as the saved defaults.

    The teacher is bidirectional and many-step; used as a few-step block-causal student it gives
    poor videos. This is a smoke test of weights and plumbing until a distilled student exists.
    """
    from fdistill.teachers import load_moving_digits_teacher

    teacher = load_moving_digits_teacher(path, model_cls=CausalWanTransformer3DModel)
    schedule = teacher.schedule
    if not isinstance(schedule, FlowMatchingSchedule):
        raise ValueError(f"a HiAR student is a flow-matching model; this teacher uses {type(schedule).__name__}")
    data = teacher.metadata.get("data", {}).get("kwargs", {})
    return HiARPipeline(
        transformer=teacher.model, scheduler=FlowMatchEulerDiscreteScheduler(shift=schedule.shift),
        label_embedding=LabelEmbeddingModel.from_label_embedding(teacher.label_embedding),
        frames_per_block=frames_per_block, denoising_steps=denoising_steps, context=context,
        num_frames=data.get("num_frames"), height=data.get("size"), width=data.get("size"), window=window,
        order=order, guidance_scale=guidance_scale,
    )
