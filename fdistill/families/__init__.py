"""Teacher families: which diffusers pipeline folders fdistill distils, and how (one adapter each).

``family_for(folder)`` reads ``model_index.json`` only (no weights) and names the adapter or refuses
the folder with its pipeline class; ``load_family(folder)`` loads the pipeline through diffusers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .base import Family, FamilyNet, OneStep
from .dit import DiT
from .flux import Flux
from .pixart import PixArt
from .sd3 import StableDiffusion3
from .stable_diffusion import StableDiffusion, StableDiffusionXL

__all__ = ["FAMILIES", "Family", "FamilyNet", "OneStep", "family_for", "load_family"]

FAMILIES: dict[str, type[Family]] = {f.name: f for f in (StableDiffusion, StableDiffusionXL, StableDiffusion3, Flux,
                                                          PixArt, DiT)}
_BY_PIPELINE = {cls_name: f for f in FAMILIES.values() for cls_name in f.pipeline_classes}
SD_COMPONENT_FOLDERS = ("unet", "scheduler", "text_encoder", "tokenizer", "vae")
"""An SD1.x/2.x folder of components without ``model_index.json`` (as components' own ``save_pretrained`` write)."""

_NOT_IMAGE_TEACHERS = {"Wan": "a video pipeline: video students are distilled with `fdistill distill-video`",
                       "FDistill": "an fdistill student, not a teacher",
                       "HiAR": "an fdistill video student, not a teacher"}


def supported() -> str:
    return ", ".join(f"{f.label} ({' / '.join(f.pipeline_classes)})" for f in FAMILIES.values())


def pipeline_class_name(root: Path) -> str | None:
    index = root / "model_index.json"
    return json.loads(index.read_text()).get("_class_name") if index.is_file() else None


def family_for(root: str | Path) -> type[Family]:
    """The adapter for the pipeline folder ``root``, from ``model_index.json``; a ValueError names what it is."""
    root = Path(root)
    name = pipeline_class_name(root)
    if name is None:
        if all((root / sub).is_dir() for sub in SD_COMPONENT_FOLDERS) and not (root / "text_encoder_2").is_dir():
            return StableDiffusion
        missing = [sub for sub in SD_COMPONENT_FOLDERS if not (root / sub).is_dir()]
        raise ValueError(f"teacher.path {str(root)!r} has no model_index.json and is not an SD1.x/2.x component folder "
                         f"(no {', '.join(missing) or 'single text encoder'}): give a folder written by a diffusers "
                         f"pipeline's save_pretrained; supported: {supported()}")
    if name in _BY_PIPELINE:
        return _BY_PIPELINE[name]
    for prefix, why in _NOT_IMAGE_TEACHERS.items():
        if name.startswith(prefix):
            raise ValueError(f"teacher.path {str(root)!r} is a {name} folder, {why}")
    raise ValueError(f"teacher.path {str(root)!r} is a {name} folder, which fdistill cannot distil yet; supported "
                     f"text-to-image and class-conditional teachers: {supported()}")


ENCODERS = ("vae", "text_encoder", "tokenizer")
"""Components a latent-cache run does without (names starting so: ``text_encoder_2``, ``tokenizer_3``…)."""


def load_family(root: str | Path, device: torch.device | str = "cpu", resolution: tuple[int, int] | None = None,
                guidance_scale: float = 1.0, encoders: bool = True, vae_factor: int | None = None) -> Family:
    """Load the teacher pipeline at ``root`` (frozen, eval) and wrap it in its family's adapter.

    ``encoders=False`` loads it without its VAE, text encoders and tokenizers (a run on a latent cache, whose
    ``vae_factor`` then gives the latent size); the export reads them from ``root`` at the end.
    """
    import diffusers

    root = Path(root)
    cls = family_for(root)
    pipeline_cls = getattr(diffusers, pipeline_class_name(root) or cls.pipeline_classes[0])
    if pipeline_class_name(root) is None:
        parts = {sub: _load_component(root, sub) if encoders or not sub.startswith(ENCODERS) else None
                 for sub in SD_COMPONENT_FOLDERS}
        pipe = pipeline_cls(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        index = json.loads((root / "model_index.json").read_text())
        skip = {} if encoders else {k: None for k in index if k.startswith(ENCODERS)}
        pipe = pipeline_cls.from_pretrained(root, **skip)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    return cls(pipe, resolution, guidance_scale, root, vae_factor)


def _load_component(root: Path, sub: str):
    import diffusers
    import transformers

    config = root / sub / ("scheduler_config.json" if sub == "scheduler" else "config.json")
    if sub == "tokenizer":
        return transformers.AutoTokenizer.from_pretrained(root / sub)
    class_name = json.loads(config.read_text()).get("_class_name") if config.is_file() else None
    if class_name is not None:
        return getattr(diffusers, class_name).from_pretrained(root / sub)
    return transformers.AutoModel.from_pretrained(root / sub)
