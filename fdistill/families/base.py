"""What a teacher family is: one adapter over a diffusers pipeline class.

An adapter answers, for its family, the questions the f-distill objective never asks itself:

* how a prompt (or class label) becomes the denoiser's condition — through the pipeline's own
  ``encode_prompt`` — and what the unconditional input of classifier-free guidance is;
* how the denoiser is called at (x_t, t, condition) and what its raw output is (ε, v or flow; a
  learned-sigma half dropped; Flux's packed tokens unpacked);
* the latent shape at the training resolution, and the noise schedule (read from the scheduler and
  checked against it);
* how a one-step student is exported: the teacher's folder with the student's denoiser in its place
  and a scheduler whose single step returns the student's x̂0 in the stock pipeline.

Conditions travel through the trainer as one float tensor per sample, (B, D): the adapter packs its
named parts (prompt embeddings, pooled embeddings, time ids, attention masks, class labels) into it
and unpacks them at the call. Batching, classifier-free guidance, caches and sharding therefore treat
every family alike.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..io import atomic_folder
from ..schedules import FlowMatchingSchedule, NoiseSchedule, schedule_from_scheduler

__all__ = ["Family", "FamilyNet", "OneStep"]


class OneStep:
    """How the stock pipeline runs one step: its scheduler, the student's time and input scale.

    The pipeline feeds the denoiser ``scale·ε`` at timestep ``t`` (schedule units) and its scheduler
    step returns x̂0 of that output; the student is trained on exactly ``G(ε) = x̂0(scale·ε, t)``.
    """

    def __init__(self, scheduler, t: float, scale: float):
        self.scheduler, self.t, self.scale = scheduler, t, scale


class Family:
    """A teacher family (see the module docstring); subclasses fill in the class attributes and hooks.

    Args:
        pipe: the teacher pipeline, loaded by diffusers from the user's folder.
        resolution: (height, width) in pixels the student is trained at (None: the pipeline's default).
        guidance_scale: for ``guidance = "embedded"`` families (Flux.1-dev), the guidance value fed to
            the networks' guidance embedding; other families guide by classifier-free guidance instead.
        root: the folder ``pipe`` was loaded from (the export reads the components ``pipe`` was loaded without).
        vae_factor: the VAE's downsampling factor when ``pipe`` was loaded without its VAE (a latent cache's run).
    """

    name: ClassVar[str]
    label: ClassVar[str]
    pipeline_classes: ClassVar[tuple[str, ...]]
    denoiser_name: ClassVar[str] = "transformer"
    conditioning: ClassVar[str] = "text"  # or "class"
    guidance: ClassVar[str] = "cfg"  # or "embedded"
    no_cfg_guidance_scale: ClassVar[float] = 0.0  # the stock call's guidance_scale that runs no CFG
    scales_initial_noise: ClassVar[bool] = True  # the pipeline multiplies its noise by init_noise_sigma
    stock_call_kwargs: ClassVar[dict[str, Any]] = {}  # extra arguments of the stock call (README)

    def __init__(self, pipe, resolution: tuple[int, int] | None = None, guidance_scale: float = 1.0,
                 root: str | Path | None = None, vae_factor: int | None = None):
        self.pipe, self.root, self.vae_factor = pipe, None if root is None else Path(root), vae_factor
        self.height, self.width = resolution or self.default_resolution()
        self.guidance_scale = guidance_scale
        self._layout: list[tuple[str, tuple[int, ...], torch.dtype]] | None = None
        self.schedule = self.make_schedule()
        self.check_resolution()

    def __deepcopy__(self, memo):  # a FamilyNet's deep copy (student, fake score) shares the frozen adapter
        return self

    # -- the folder ------------------------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        """The teacher's denoiser (``unet`` or ``transformer``)."""
        return getattr(self.pipe, self.denoiser_name)

    @property
    def vae_scale_factor(self) -> int:
        if self.vae_factor is not None:
            return self.vae_factor
        factor = getattr(self.pipe, "vae_scale_factor", None)  # DiTPipeline has none: read its VAE
        return int(factor or 2 ** (len(self.pipe.vae.config.block_out_channels) - 1))

    def default_resolution(self) -> tuple[int, int]:
        size = self.model.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return h * self.vae_scale_factor, w * self.vae_scale_factor

    def check_resolution(self) -> None:
        step = self.vae_scale_factor * self.latent_multiple
        for name, size in (("height", self.height), ("width", self.width)):
            if size < step or size % step:
                raise ValueError(f"{self.label} teacher: data.resolution {name}={size} must be a positive multiple "
                                 f"of {step} (VAE factor {self.vae_scale_factor} × latent multiple "
                                 f"{self.latent_multiple})")

    latent_multiple: ClassVar[int] = 1

    @property
    def latent_channels(self) -> int:
        return int(self.model.config.in_channels)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the unpacked latents the student generates."""
        f = self.vae_scale_factor
        return self.latent_channels, self.height // f, self.width // f

    def make_schedule(self) -> NoiseSchedule:
        return schedule_from_scheduler(self.pipe.scheduler)

    @torch.no_grad()
    def latents_from_images(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """The latents the denoiser works in for images (N, C, H, W) in [−1, 1]: the VAE's posterior mean,
        shifted and scaled as the pipeline's decoding undoes it (``z / scaling_factor + shift_factor``)."""
        vae = self.pipe.vae
        shift = vae.config.get("shift_factor") or 0.0
        out = []
        for part in images.split(batch_size):
            z = vae.encode(part.to(vae.device, vae.dtype)).latent_dist.mode()
            out.append(((z - shift) * vae.config.scaling_factor).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def images_from_latents(self, latents: Tensor) -> Tensor:
        """Decoded images in [−1, 1] for latents (N, C, h, w), as the stock pipeline decodes them."""
        vae = self.pipe.vae
        shift = vae.config.get("shift_factor") or 0.0
        z = latents / vae.config.scaling_factor + shift
        return vae.decode(z.to(vae.device, vae.dtype), return_dict=False)[0].float()

    # -- conditions --------------------------------------------------------------------------------
    def encode(self, prompts: list[str]) -> dict[str, Tensor]:
        """The denoiser's condition for each prompt, through the pipeline's own ``encode_prompt``."""
        raise NotImplementedError

    def negative(self) -> dict[str, Tensor]:
        """The unconditional input (one row) the stock pipeline uses for classifier-free guidance."""
        raise NotImplementedError

    def conditions(self, prompts: Sequence[str]) -> Tensor:
        """Packed conditions (N, D) float32 for ``prompts`` (class families: class labels)."""
        with torch.no_grad():
            return self._pack(self.encode(list(prompts)))

    def null_condition(self) -> Tensor:
        """The packed unconditional input, (1, D)."""
        with torch.no_grad():
            return self._pack(self.negative())

    def _pack(self, parts: dict[str, Tensor]) -> Tensor:
        layout = [(k, tuple(v.shape[1:]), v.dtype) for k, v in parts.items()]
        if self._layout is None:
            self._layout = layout
        elif layout != self._layout:
            raise ValueError(f"{self.label}: condition parts {layout} differ from the first ones {self._layout}")
        return torch.cat([v.detach().reshape(v.shape[0], -1).float().cpu() for v in parts.values()], 1)

    def layout_record(self) -> list:
        """The packed conditions' layout as JSON (a latent cache stores it: its runs load no text encoder)."""
        if self._layout is None:
            raise RuntimeError("conditions() or null_condition() must run before the layout is known")
        return [[k, list(shape), str(dtype).removeprefix("torch.")] for k, shape, dtype in self._layout]

    def set_layout(self, record: list) -> None:
        """The layout of packed conditions encoded elsewhere (:meth:`layout_record`)."""
        self._layout = [(k, tuple(shape), getattr(torch, dtype)) for k, shape, dtype in record]

    def unpack(self, condition: Tensor) -> dict[str, Tensor]:
        """The named parts of packed conditions (B, D), on the condition's device, in their own dtypes."""
        if self._layout is None:
            raise RuntimeError("conditions() or null_condition() must run before a packed condition is unpacked")
        parts, start = {}, 0
        for key, shape, dtype in self._layout:
            n = math.prod(shape)
            value = condition[:, start:start + n].reshape(condition.shape[0], *shape)
            parts[key] = value.round().to(dtype) if not dtype.is_floating_point else value
            start += n
        if start != condition.shape[1]:
            raise ValueError(f"a packed {self.label} condition has {condition.shape[1]} values, expected {start}")
        return parts

    # -- the denoiser --------------------------------------------------------------------------------
    def call(self, model: nn.Module, sample: Tensor, timestep: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """The raw output of ``model`` (the teacher's class) as the stock pipeline computes it, (B, C, h, w)."""
        raise NotImplementedError

    def image_tokens(self, output: Any) -> Tensor:
        """A tapped block's image features: (B, C, h, w) maps or (B, L, C) tokens."""
        return output[0] if isinstance(output, tuple) else output

    default_feature_modules: ClassVar[tuple[str, ...]] = ()

    def feature_modules(self) -> list[str]:
        """The discriminator's default taps: the middle transformer block (UNets: ``mid_block``)."""
        if self.default_feature_modules:
            return list(self.default_feature_modules)
        blocks = self.model.transformer_blocks
        return [f"transformer_blocks.{len(blocks) // 2}"]

    # -- one step and export ---------------------------------------------------------------------------
    def schedule_time(self, scheduler, timestep: Tensor) -> float:
        """A scheduler timestep in the schedule's units (flow matching: σ = timestep / 1000)."""
        value = float(timestep)
        return value / 1000.0 if self.schedule.t_max == 1.0 else value

    def step_x0(self, scheduler, output: Tensor, timestep: Tensor, sample: Tensor) -> Tensor:
        """What the stock pipeline keeps from a scheduler step (its next latents)."""
        return scheduler.step(output, timestep, sample, return_dict=False)[0]

    def one_step(self) -> OneStep:
        """The first export scheduler whose single step gives the student's x̂0, checked numerically.

        Tried in order: the teacher's scheduler class with trailing spacing (and DDIM's final ᾱ = 1),
        then the schedule's plain Euler-type scheduler (DDIM for VP, FlowMatchEuler for flow matching)
        with no output clipping. Every other option of the teacher's scheduler is carried over unchanged.
        """
        import diffusers

        teacher = self.export_base_scheduler()
        fallback = "FlowMatchEulerDiscreteScheduler" if isinstance(self.schedule, FlowMatchingSchedule) \
            else "DDIMScheduler"
        tried = []
        for cls in dict.fromkeys((type(teacher), getattr(diffusers, fallback))):
            params = inspect.signature(cls.__init__).parameters
            config = dict(teacher.config)
            if "timestep_spacing" in params:
                config["timestep_spacing"] = "trailing"
            if "set_alpha_to_one" in params:
                config["set_alpha_to_one"] = True
            if cls is not type(teacher):  # a fallback adds no output clipping the teacher's scheduler did not do
                config.update({k: False for k in ("clip_sample", "thresholding") if k in params})
            scheduler = cls.from_config(config)
            try:
                result = self._check_one_step(scheduler)
            except Exception as e:  # a scheduler the stock pipeline cannot step once fails here too
                result = f"{type(e).__name__}: {e}"
            if isinstance(result, OneStep):
                return result
            tried.append(f"{cls.__name__}: {result}")
        raise ValueError(f"{self.label}: no scheduler makes one stock step return the student's sample "
                         f"({'; '.join(tried)})")

    def export_base_scheduler(self):
        """The teacher's scheduler as the export starts from it (options fdistill resolved made explicit)."""
        return self.pipe.scheduler

    def _check_one_step(self, scheduler) -> OneStep | str:
        s = self.schedule
        scheduler.set_timesteps(1)
        t0 = scheduler.timesteps[0]
        t = self.schedule_time(scheduler, t0)
        if abs(t - s.t_max) > 1e-4 * max(1.0, s.t_max):
            return f"one step starts at t={t:g}, not at the noisiest t={s.t_max:g}"
        g = torch.Generator().manual_seed(0)
        eps, out = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
        latents = eps * getattr(scheduler, "init_noise_sigma", 1.0) if self.scales_initial_noise else eps
        scale_input = getattr(scheduler, "scale_model_input", None)  # flow-matching schedulers have none
        model_input = scale_input(latents, t0) if scale_input is not None else latents
        scale = float((model_input / eps).mean())
        if not torch.allclose(model_input, scale * eps, rtol=1e-5, atol=1e-6):
            return "its model input is not a multiple of the noise"
        x0 = self.step_x0(scheduler, out, t0, model_input if not self.scales_initial_noise else latents)
        expected = s.to_x0(out, model_input, torch.tensor(t))
        if not torch.allclose(x0.float(), expected.float(), rtol=1e-4, atol=1e-4):
            return f"its step differs from x̂0 by {(x0 - expected).abs().max().item():.3g}"
        return OneStep(scheduler, t, scale)

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Constructor settings of the teacher pipeline that are not components (e.g. SDXL's zeros rule)."""
        params = inspect.signature(type(self.pipe).__init__).parameters
        components = set(self.pipe.components)
        return {k: v for k, v in self.pipe.config.items() if k in params and k not in components
                and not k.startswith("_")}

    def export(self, student: nn.Module, path: str | Path, extra: dict[str, Any] | None = None,
               scheduler=None) -> Path:
        """Write the teacher's pipeline with ``student`` as its denoiser to ``path``.

        The scheduler is the one-step scheduler (:meth:`one_step`) unless ``scheduler`` is given (a trained
        teacher keeps its own). The folder is written next to ``path`` and renamed into place, so a crash
        leaves no half folder. ``fdistill.json`` beside ``model_index.json`` records the family and, for a
        one-step student, the stock call it was trained for.
        """
        path = Path(path)
        one_step = scheduler is None
        scheduler = self.one_step().scheduler if one_step else scheduler
        replaced = {self.denoiser_name: student, "scheduler": scheduler}
        left_out = [k for k, v in self.pipe.components.items() if v is None and self.root is not None
                    and (self.root / k).is_dir()]
        if left_out:  # loaded without its VAE / text encoders (a latent-cache run): the folder has them
            pipe = type(self.pipe).from_pretrained(self.root, **replaced)
        else:
            pipe = type(self.pipe)(**{**self.pipe.components, **replaced}, **self.pipeline_kwargs())
        with atomic_folder(path) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
            record = {"family": self.name, "pipeline_class": type(self.pipe).__name__,
                      **({"stock_call": self.stock_call()} if one_step else {}), **(extra or {})}
            (tmp / "fdistill.json").write_text(json.dumps(record, indent=1) + "\n")
        return path

    @property
    def lora_loadable(self) -> bool:
        """Whether the stock pipeline loads a LoRA onto its denoiser (``load_lora_weights``)."""
        saver = getattr(type(self.pipe), "save_lora_weights", None)
        return saver is not None and f"{self.denoiser_name}_lora_layers" in inspect.signature(saver).parameters

    def export_lora(self, state_dict: dict[str, Tensor], path: str | Path) -> Path:
        """Write the student's LoRA so that ``pipe.load_lora_weights(path)`` puts it on the teacher's own pipeline
        (the LCM-LoRA convention), with the one-step scheduler in ``path/scheduler`` to swap in."""
        pipeline_cls = type(self.pipe)
        if not self.lora_loadable:
            raise ValueError(f"{pipeline_cls.__name__} loads no LoRA (no load_lora_weights for its "
                             f"{self.denoiser_name}): export the merged student instead")
        with atomic_folder(path) as tmp:
            pipeline_cls.save_lora_weights(tmp, **{f"{self.denoiser_name}_lora_layers": state_dict},
                                           safe_serialization=True)
            self.one_step().scheduler.save_pretrained(tmp / "scheduler")
            record = {"family": self.name, "pipeline_class": pipeline_cls.__name__, "stock_call": self.stock_call()}
            (tmp / "fdistill.json").write_text(json.dumps(record, indent=1) + "\n")
        return Path(path)

    def stock_call(self) -> dict[str, Any]:
        """The keyword arguments of the stock one-step call of an exported student."""
        guidance = self.guidance_scale if self.guidance == "embedded" else self.no_cfg_guidance_scale
        call = {"num_inference_steps": 1, "guidance_scale": guidance}
        if (self.height, self.width) != self.pipeline_default_resolution():
            call.update(height=self.height, width=self.width)
        return {**call, **self.stock_call_kwargs}

    def pipeline_default_resolution(self) -> tuple[int, int]:
        """The (height, width) the stock pipeline draws when the call names none."""
        return self.default_resolution()


class FamilyNet(nn.Module):
    """A family's denoiser as fdistill calls it: ``forward(sample, timestep, condition)`` → raw output.

    ``sample`` is (B, C, h, w) unpacked latents, ``timestep`` the schedule's model time (B,), and
    ``condition`` the family's packed conditions (B, D). The wrapped ``model`` is the diffusers
    denoiser itself (what ``state_dict`` and the export hold). Feature taps are named relative to it
    (``feature_root``) and read as (B, C, h, w) maps (``feature_map``).
    """

    def __init__(self, model: nn.Module, family: Family):
        super().__init__()
        self.model, self.family = model, family
        self._grid: tuple[int, int] = (0, 0)

    @property
    def feature_root(self) -> nn.Module:
        return self.model

    def forward(self, sample: Tensor, timestep: Tensor, condition: Tensor | None = None) -> Tensor:
        if condition is None:
            raise ValueError(f"a {self.family.label} denoiser needs a condition")
        self._grid = tuple(sample.shape[-2:])
        return self.family.call(self.model, sample, timestep, self.family.unpack(condition))

    def feature_map(self, output: Any) -> Tensor:
        """A tapped block's output as (B, C, h', w'): image tokens are laid back on the latent grid."""
        x = self.family.image_tokens(output)
        if x.ndim == 4:
            return x
        b, n, c = x.shape
        h, w = self._grid
        ratio = math.sqrt(h * w / n)
        gh, gw = round(h / ratio), round(w / ratio)
        if gh * gw != n:
            raise ValueError(f"{n} image tokens do not tile a {h}×{w} latent grid")
        return x.transpose(1, 2).reshape(b, c, gh, gw)
