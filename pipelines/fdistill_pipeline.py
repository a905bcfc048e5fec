"""FDistillPipeline: sample a distilled one-step (or few-step) student, shaped like diffusers' DDPMPipeline.

It serves fdistill's own class-conditional and unconditional testbeds (the digits demo); text-to-image
students are exported as their teacher's own diffusers pipeline class (``fdistill.families``) and run
there, so this pipeline takes no prompt and holds no text encoder.

The student is a plain diffusers denoiser trained under one of fdistill's noise schedules; the
pipeline carries that schedule as a standard diffusers ``scheduler`` component (EDMEulerScheduler,
FlowMatchEulerDiscreteScheduler, DDIMScheduler, …) and recovers it with ``schedule_from_scheduler``.

One step: x_T = σ_T ε at the student time T (t_max unless the config sets ``student_t``), then
x̂0 = to_x0(unet(model_input(x_T, T), model_time(T), class_labels)). With ``num_inference_steps`` = N > 1
the pipeline runs multistep consistency sampling (Song et al. 2023, Algorithm 1; DMD2's 4-step SD
students): after each step the x̂0 is re-noised to the next, lower time with fresh noise from
``generator``, x_{t'} = α_{t'} x̂0 + σ_{t'} ε', and denoised again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from fdistill.denoisers import call_model
from fdistill.schedules import NoiseSchedule, schedule_from_scheduler, scheduler_for

from .diffusers_loading import SavesLoaderModule

__all__ = ["FDistillPipeline", "export_pipeline"]

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
TEXT_COMPONENTS = ("text_encoder", "tokenizer")
TEXT_ARGUMENTS = ("prompt", "prompt_embeds", "negative_prompt", "negative_prompt_embeds")
NOT_TEXT_TO_IMAGE = ("FDistillPipeline is class-conditional (or unconditional) only: text-to-image students are "
                     "exported as their teacher's own diffusers pipeline class (StableDiffusionPipeline, "
                     "StableDiffusionXLPipeline, FluxPipeline, …); load such a folder with "
                     "DiffusionPipeline.from_pretrained(folder) and call it with a prompt")


class FDistillPipeline(SavesLoaderModule, DiffusionPipeline):
    r"""Pipeline for one-step (or few-step) generation with an f-distill student of a class-conditional or
    unconditional testbed.

    Components:
        unet: the student, a diffusers denoiser without cross-attention: ``UNet2DModel``, class-conditional
            through ``num_class_embeds`` (or ``class_embed_type``) or unconditional. A text-conditional one
            (``cross_attention_dim``) is refused: text-to-image students run in their teacher's own pipeline.
        scheduler: a diffusers scheduler describing the student's noise schedule (only its config is used).
        vae: optional ``AutoencoderKL``; when present the student works in its latent space.

    Config (saved in ``model_index.json``; ``pipe()`` uses it, call arguments override):
        student_t: the time (in the schedule's units) the student maps noise from, if it is not ``t_max``.
        height, width: the default output size in pixels (None: the unet's ``sample_size`` times the
            VAE factor).
    """

    model_cpu_offload_seq = "unet->vae"
    _optional_components = ["vae"]

    def __init__(self, unet, scheduler, vae=None, student_t: float | None = None, height: int | None = None,
                 width: int | None = None):
        super().__init__()
        dim = getattr(unet, "config", {}).get("cross_attention_dim")
        if dim is not None:
            raise ValueError(f"this {type(unet).__name__} is text-conditional (cross_attention_dim={dim}): "
                             f"{NOT_TEXT_TO_IMAGE}")
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)
        self.register_to_config(student_t=None if student_t is None else float(student_t),
                                height=None if height is None else int(height),
                                width=None if width is None else int(width))
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_normalize=True)

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        """diffusers' loaders (``FDistillPipeline.from_pretrained`` and ``DiffusionPipeline.from_pretrained``)
        read ``model_index.json`` through here. Older fdistill folders list ``text_encoder`` and
        ``tokenizer``: null ones (every export without text) are dropped, which diffusers would otherwise
        report as unexpected config attributes; real ones (a text-to-image student) are refused before
        anything loads, where diffusers would ignore them and load the rest."""
        present = [name for name in TEXT_COMPONENTS
                   if kwargs.get(name) is not None or config_dict.get(name, [None])[0] is not None]
        if present:
            raise ValueError(f"this folder has text components ({', '.join(present)}): {NOT_TEXT_TO_IMAGE}")
        config_dict = {k: v for k, v in config_dict.items() if k not in TEXT_COMPONENTS}
        return super().extract_init_dict(config_dict, **kwargs)

    # -- what the student is --------------------------------------------------------------
    @property
    def schedule(self) -> NoiseSchedule:
        """The fdistill noise schedule the student was trained under (from ``scheduler``'s config)."""
        return schedule_from_scheduler(self.scheduler)

    @property
    def conditioning(self) -> str | None:
        """How the unet is conditioned, read from its config: "class" (``class_labels``) or None (unconditional)."""
        return "class" if self.takes_class_labels else None

    @property
    def takes_class_labels(self) -> bool:
        """Whether the unet has a class embedding (``num_class_embeds`` or ``class_embed_type``)."""
        config = self.unet.config
        return config.get("num_class_embeds") is not None or config.get("class_embed_type") is not None

    @property
    def num_classes(self) -> int | None:
        """``num_class_embeds`` of the unet (labels lie in [0, num_classes)), None if it has none."""
        return self.unet.config.get("num_class_embeds")

    def student_times(self, num_inference_steps: int) -> Tensor:
        """Descending times t_0 > … > t_{N−1} at which the student denoises, (N,) float32.

        t_0 is ``student_t`` (or t_max); the rest are the schedule's ``sampling_times(N)`` grid. Grids that
        end at the clean end t_min (EDM's) are taken from N + 1 points instead, so no step is spent at
        t_min, where the re-noised input already is the output.
        """
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        s, n = self.schedule, num_inference_steps
        times = s.sampling_times(n)[:n]
        if n > 1 and times[-1] <= s.t_min * (1 + 1e-6):
            times = s.sampling_times(n + 1)[:n]
        times = times.float().clone()
        if self.config.student_t is not None:
            times[0] = self.config.student_t
        if (times.diff() >= 0).any():
            raise ValueError(f"student_t={self.config.student_t} is not above the next sampling time "
                             f"{times[1].item():g} for num_inference_steps={n}; pass timesteps explicitly")
        return times

    # -- inputs -----------------------------------------------------------------------------
    def check_inputs(self, class_labels, num_images_per_prompt, batch_size, output_type, height, width,
                     latents) -> None:
        """Raise a ValueError naming the bad value and the valid ones."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not supported; valid: {', '.join(OUTPUT_TYPES)}")
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")

        n = self.num_classes
        valid = f"ints in [0, {n})" if n is not None else "per the unet's class_embed_type"
        if isinstance(class_labels, str) or (isinstance(class_labels, list | tuple)
                                             and any(isinstance(c, str) for c in class_labels)):
            wanted = f", not {valid}" if self.takes_class_labels else ""
            raise ValueError(f"class_labels={class_labels!r} is text{wanted}: {NOT_TEXT_TO_IMAGE}")
        if self.takes_class_labels and class_labels is None:
            raise ValueError(f"this unet is class-conditional: pass class_labels ({valid})")
        if class_labels is not None and not self.takes_class_labels:
            raise ValueError(f"this {type(self.unet).__name__} has no class embedding, it takes no class_labels")
        if class_labels is not None:
            labels = torch.as_tensor(class_labels).reshape(-1)
            if n is not None:
                if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
                    raise ValueError(f"class_labels must be integers ({valid}), got {labels.tolist()}")
                bad = labels[(labels < 0) | (labels >= n)]
                if bad.numel():
                    raise ValueError(f"class_labels {bad.tolist()} out of range: valid labels are 0..{n - 1} "
                                     f"(num_class_embeds={n})")
            if batch_size is not None and labels.numel() != batch_size:
                raise ValueError(f"got {labels.numel()} class_labels for batch_size={batch_size}: pass one per "
                                 "batch element (or leave batch_size unset)")
        unet_factor = 2 ** (len(self.unet.config.get("block_out_channels") or [0]) - 1)  # a downsampler per level but the last
        multiple = self.vae_scale_factor * unet_factor
        for name, size in (("height", height), ("width", width)):
            if size is not None and (size < 1 or size % multiple):
                raise ValueError(f"{name}={size} must be a positive multiple of {multiple} (the VAE's downsampling "
                                 f"factor {self.vae_scale_factor} × the unet's {unet_factor})")
        if latents is not None and latents.ndim != 4:
            raise ValueError(f"latents must be (B, C, H, W), got {tuple(latents.shape)}")

    # -- sampling ---------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | Sequence[int] | Tensor | None = None,
        num_images_per_prompt: int = 1,
        batch_size: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 1,
        timesteps: Sequence[float] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        **kwargs,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate images with the student.

        Args:
            class_labels: class label(s) in [0, num_class_embeds), for a class-conditional unet.
            num_images_per_prompt: images per class label (for an unconditional unet: multiplies
                ``batch_size``).
            batch_size: number of class labels; for an unconditional unet the number of images (default 1).
                When given with class labels the counts must match.
            generator: torch generator(s) for the initial noise and the re-noising of multistep sampling;
                a list gives one generator per image.
            latents: unit Gaussian noise ε (B, C, h, w) to start from instead of drawing it (in latent space
                when there is a VAE); the student's input is σ_T ε.
            height, width: output size in pixels (default: the config's, else the unet's ``sample_size``
                times the VAE factor).
            num_inference_steps: 1 for one-step generation; N > 1 runs multistep consistency sampling
                (denoise, re-noise x̂0 to the next time with fresh noise, denoise again).
            timesteps: explicit descending student times (schedule units) overriding ``student_times(N)``.
            output_type: "pil", "np" (B, H, W, C) in [0, 1], "pt" (B, C, H, W) in [0, 1], or "latent"
                (the student's raw x̂0 before VAE decoding and denormalisation).
            return_dict: return an ``ImagePipelineOutput`` rather than a tuple.
            kwargs: none is taken. Text inputs (``prompt``, ``prompt_embeds``, ``negative_prompt``,
                ``negative_prompt_embeds``) raise a ValueError that points to the teacher's own pipeline
                class, which runs text-to-image students; any other name raises a TypeError.

        Returns:
            ``ImagePipelineOutput(images=...)`` or ``(images,)``. Single-channel images become PIL "L" images.
        """
        text = [name for name in TEXT_ARGUMENTS if name in kwargs]
        if text:
            raise ValueError(f"got {', '.join(text)}: {NOT_TEXT_TO_IMAGE}")
        if kwargs:
            raise TypeError(f"{type(self).__name__}.__call__() got an unexpected keyword argument "
                            f"{next(iter(kwargs))!r}")
        height = self.config.height if height is None else height
        width = self.config.width if width is None else width
        self.check_inputs(class_labels, num_images_per_prompt, batch_size, output_type, height, width, latents)
        device = self._execution_device
        dtype = self.unet.dtype
        schedule = self.schedule

        labels = None
        if class_labels is not None:
            labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1).to(device)
            labels = labels.repeat_interleave(num_images_per_prompt)
        total = len(labels) if labels is not None else (batch_size or 1) * num_images_per_prompt

        sample_size = self.unet.config.sample_size
        h0, w0 = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
        h = h0 if height is None else height // self.vae_scale_factor
        w = w0 if width is None else width // self.vae_scale_factor
        shape = (total, self.unet.config.in_channels, h, w)
        if isinstance(generator, list) and len(generator) != total:
            raise ValueError(f"got {len(generator)} generators for {total} images: pass one per image or a single one")
        if latents is None:
            noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents of shape {tuple(latents.shape)} do not match the expected {shape} "
                             f"({total} images of {shape[1]}×{h}×{w})")
        else:
            noise = latents.to(device=device, dtype=dtype)

        if timesteps is None:
            times = self.student_times(num_inference_steps)
        else:
            times = torch.as_tensor(timesteps, dtype=torch.float32).reshape(-1)
            if times.numel() == 0 or (times.diff() >= 0).any():
                raise ValueError(f"timesteps must be non-empty and strictly decreasing, got {times.tolist()}")
        times = times.to(device)

        # schedule arithmetic in at least float32; only the unet sees its own dtype
        x = self._student_input(schedule, noise.to(torch.promote_types(dtype, torch.float32)), times[0])
        for i in self.progress_bar(range(len(times))):
            t = times[i].expand(total)
            output = call_model(self.unet, schedule.model_input(x, t).to(dtype), schedule.model_time(t),
                                "class_labels", labels)
            x0 = schedule.to_x0(output.to(x.dtype), x, t)
            if i + 1 < len(times):
                fresh = randn_tensor(shape, generator=generator, device=device, dtype=dtype).to(x.dtype)
                x = schedule.add_noise(x0, fresh, times[i + 1].expand(total))

        if output_type == "latent":
            images = x0.to(dtype)
        else:
            if self.vae is not None:
                shift = self.vae.config.get("shift_factor") or 0.0
                z = x0 / self.vae.config.scaling_factor + shift
                x0 = self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0]
            images = self.image_processor.postprocess(x0, output_type=output_type)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    @staticmethod
    def _student_input(schedule: NoiseSchedule, noise: Tensor, t0: Tensor) -> Tensor:
        """x at the first time t_0: ``schedule.prior(ε)`` at t_max (as in training), else σ_{t_0} ε
        (the α_{t_0} x0 part is unknown and, at a student's starting time, negligible)."""
        if abs(t0.item() - schedule.t_max) <= 1e-6 * max(1.0, schedule.t_max):
            return schedule.prior(noise)
        _, sigma = schedule.alpha_sigma(t0.to(noise.dtype))
        return sigma * noise


def export_pipeline(unet, schedule: NoiseSchedule, output_dir: str | os.PathLike, vae=None,
                    student_t: float | None = None) -> FDistillPipeline:
    """Wrap a trained class-conditional or unconditional student into an :class:`FDistillPipeline` and
    ``save_pretrained`` it to ``output_dir``.

    ``unet`` must be the unwrapped model (``accelerator.unwrap_model``). The schedule is stored as the
    matching diffusers scheduler (``scheduler_for``); a schedule the scheduler cannot express raises.
    """
    scheduler = scheduler_for(schedule)
    restored = schedule_from_scheduler(scheduler)
    if type(restored) is not type(schedule) or restored.prediction_type != schedule.prediction_type:
        raise ValueError(f"{type(schedule).__name__}(prediction_type={schedule.prediction_type!r}) does not "
                         f"round-trip through {type(scheduler).__name__} (restored "
                         f"{type(restored).__name__}, prediction_type={restored.prediction_type!r})")
    pipe = FDistillPipeline(unet=unet, scheduler=scheduler, vae=vae, student_t=student_t)
    pipe.save_pretrained(output_dir)
    return pipe
