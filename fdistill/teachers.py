"""The shipped tiny teachers, loaded as :class:`~fdistill.denoisers.Denoiser` objects.

A teacher asset is two files side by side: ``<name>.safetensors`` (all weights, keys prefixed
``model.`` and, for video teachers, ``label_embedding.``) and ``<name>.json`` (the diffusers model
class and config, the noise schedule, the conditioning and the measured metrics). Weights are only
ever read with safetensors.

* digits teacher: EDM-preconditioned class-conditional ``UNet2DModel``; the condition is the class
  label, ``null_label = num_classes`` is the "no class" label used for classifier-free guidance.
* moving-digits teacher: flow-matching ``WanTransformer3DModel``; a :class:`LabelEmbedding` plays
  the role of Wan's text encoder and maps labels to ``encoder_hidden_states`` (B, L, text_dim), so
  the condition passed to the Denoiser is that embedding (``denoiser.label_embedding(labels)``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .denoisers import Denoiser
from .schedules import get_schedule

ASSETS = Path(__file__).parent / "assets"
DIGITS_TEACHER = ASSETS / "digits_teacher.safetensors"
MOVING_DIGITS_TEACHER = ASSETS / "moving_digits_teacher.safetensors"

__all__ = [
    "LabelEmbedding",
    "sample_teacher",
    "export_teacher_asset",
    "load_digits_teacher",
    "load_moving_digits_teacher",
    "load_teacher",
    "model_class",
]


class LabelEmbedding(nn.Module):
    """Class label → ``encoder_hidden_states`` (B, num_tokens, dim) for text-conditioned models.

    Labels are 0..num_classes−1 plus ``null_label = num_classes`` for the unconditional branch of
    classifier-free guidance (trained by label dropout).
    """

    def __init__(self, num_classes: int, dim: int, num_tokens: int = 1):
        super().__init__()
        self.num_classes, self.dim, self.num_tokens = num_classes, dim, num_tokens
        self.table = nn.Embedding(num_classes + 1, num_tokens * dim)
        nn.init.normal_(self.table.weight, std=1.0)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, labels: Tensor) -> Tensor:
        """labels: (B,) int64 → (B, num_tokens, dim)."""
        return self.table(labels).view(labels.shape[0], self.num_tokens, self.dim)

    def null(self) -> Tensor:
        """The unconditional embedding, (1, num_tokens, dim)."""
        return self(torch.tensor([self.null_label], device=self.table.weight.device))

    def config(self) -> dict[str, int]:
        return {"num_classes": self.num_classes, "dim": self.dim, "num_tokens": self.num_tokens}


def model_class(name: str) -> type[nn.Module]:
    """A diffusers model class by name (``UNet2DModel``, ``WanTransformer3DModel``, …)."""
    import diffusers

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"{name!r} is not a diffusers model class")
    return cls


def _split_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def export_teacher_asset(model_dir: str | Path, asset_path: str | Path,
                         metrics: dict[str, Any] | None = None) -> Path:
    """Pack a :func:`~fdistill.training.teacher.train_teacher` output folder into one asset.

    ``model_dir`` holds ``model/`` (diffusers ``save_pretrained`` of the EMA weights),
    ``teacher.json`` and, for video teachers, ``label_embedding.safetensors``. Writes
    ``asset_path`` (``.safetensors``) and the same name with ``.json``; returns the json path.
    """
    from safetensors.torch import load_file

    from .io import atomic_save_file, atomic_write_text

    model_dir, asset_path = Path(model_dir), Path(asset_path)
    meta = json.loads((model_dir / "teacher.json").read_text())
    weights = {f"model.{k}": v for k, v in load_file(model_dir / "model" / "diffusion_pytorch_model.safetensors").items()}
    if meta.get("label_embedding"):
        weights.update({f"label_embedding.{k}": v
                        for k, v in load_file(model_dir / "label_embedding.safetensors").items()})
    meta["model_config"] = {k: v for k, v in json.loads((model_dir / "model" / "config.json").read_text()).items()
                            if not k.startswith("_")}
    if metrics is not None:
        meta["metrics"] = metrics
    atomic_save_file(weights, asset_path)
    json_path = asset_path.with_suffix(".json")
    atomic_write_text(json_path, json.dumps(meta, indent=1) + "\n")
    return json_path


def _read_teacher(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(metadata, flat state dict) from an asset ``.safetensors`` or a training output folder."""
    from safetensors.torch import load_file

    from .io import check_safetensors

    def read(file: Path) -> dict[str, Tensor]:  # a truncated file is named, not a header error deep inside
        check_safetensors(file)
        return load_file(file)

    if path.is_dir():
        meta = json.loads((path / "teacher.json").read_text())
        meta["model_config"] = json.loads((path / "model" / "config.json").read_text())
        state = {f"model.{k}": v for k, v in read(path / "model" / "diffusion_pytorch_model.safetensors").items()}
        if meta.get("label_embedding"):
            state.update({f"label_embedding.{k}": v
                          for k, v in read(path / "label_embedding.safetensors").items()})
        return meta, state
    if not path.is_file():
        raise FileNotFoundError(f"teacher asset {str(path)!r} does not exist")
    return json.loads(path.with_suffix(".json").read_text()), read(path)


def load_teacher(path: str | Path, guidance_scale: float = 1.0, feature_modules: Sequence[str] = (),
                 model_cls: type[nn.Module] | None = None, device: torch.device | str = "cpu") -> Denoiser:
    """Load a teacher (asset ``.safetensors`` or training output folder) as an eval-mode Denoiser.

    ``model_cls`` overrides the stored diffusers class, e.g. the causal Wan subclass, which takes
    the same config and weights. A label-embedding teacher's Denoiser carries the embedding as
    ``denoiser.label_embedding``; its condition is ``denoiser.label_embedding(labels)``.
    """
    meta, state = _read_teacher(Path(path))
    cls = model_cls or model_class(meta["model_class"])
    model = cls.from_config(meta["model_config"])
    model.load_state_dict(_split_prefix(state, "model."), strict=True)
    schedule = get_schedule(meta["schedule"]["name"], **meta["schedule"].get("kwargs", {}))
    label_embedding = None
    if meta.get("label_embedding"):
        label_embedding = LabelEmbedding(**meta["label_embedding"])
        label_embedding.load_state_dict(_split_prefix(state, "label_embedding."), strict=True)
        null_condition: int | Tensor = label_embedding.null().detach()
        condition_key = "encoder_hidden_states"
    else:
        null_condition, condition_key = int(meta["num_classes"]), "class_labels"
    denoiser = Denoiser(model, schedule, condition_key=condition_key, guidance_scale=guidance_scale,
                        null_condition=null_condition, feature_modules=feature_modules)
    denoiser.label_embedding = label_embedding
    denoiser.num_classes = int(meta["num_classes"])
    denoiser.metadata = meta
    return denoiser.to(device).eval().requires_grad_(False)


def load_digits_teacher(path: str | Path | None = None, guidance_scale: float = 1.0,
                        feature_modules: Sequence[str] = (), device: torch.device | str = "cpu") -> Denoiser:
    """The shipped digits teacher: x̂0(x_t, σ, class_labels) for x: (B, 1, 16, 16), EDM σ ∈ [0.002, 80]."""
    return load_teacher(path or DIGITS_TEACHER, guidance_scale, feature_modules, device=device)


def load_moving_digits_teacher(path: str | Path | None = None, guidance_scale: float = 1.0,
                               feature_modules: Sequence[str] = (), model_cls: type[nn.Module] | None = None,
                               device: torch.device | str = "cpu") -> Denoiser:
    """The shipped moving-digits teacher: flow matching, x: (B, 1, F, 16, 16), t ∈ [0, 1].

    Condition with ``denoiser.label_embedding(labels)`` (B, L, text_dim).
    """
    return load_teacher(path or MOVING_DIGITS_TEACHER, guidance_scale, feature_modules, model_cls, device)


@torch.no_grad()
def sample_teacher(denoiser: Denoiser, labels: Tensor, shape: Sequence[int], steps: int,
                   guidance_scale: float | None = None, seed: int = 0, batch_size: int | None = None,
                   device: torch.device | str = "cpu") -> Tensor:
    """Samples (N, *shape) in [−1, 1] of a label-conditioned teacher for ``labels`` (N,), from noise drawn on
    the CPU from ``seed`` (so any device gives the same samples, up to rounding), ``steps`` reference steps.

    A label-embedding teacher (video) is conditioned on ``denoiser.label_embedding(labels)``.
    """
    noise = torch.randn(len(labels), *shape, generator=torch.Generator().manual_seed(seed))
    denoiser, labels = denoiser.to(device), labels.to(device)
    embedding = getattr(denoiser, "label_embedding", None)
    cond = labels if embedding is None else embedding(labels)
    return denoiser.sample(noise.to(device), steps, cond, guidance_scale, batch_size, clamp=1.0).cpu()

