"""The shipped HiAR student: one safetensors asset (weights + metadata) → a ready :class:`HiARPipeline`.

The asset holds ``model.*`` (the causal student) and ``label_embedding.*`` weights; its safetensors
metadata entry ``fdistill`` is a JSON object with the model config, the label embedding config, the
flow-matching shift and the student's defaults (``denoising_steps``, ``frames_per_block``,
``num_frames``, ``height``, ``width``, ``window``, ``order``, ``context``, ``guidance_scale``) and the
command that made it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import nn

from fdistill.io import atomic_save_file, check_safetensors
from fdistill.models.causal_wan import CausalWanTransformer3DModel
from fdistill.teachers import ASSETS, LabelEmbedding

from .hiar_pipeline import HiARPipeline, LabelEmbeddingModel

__all__ = ["HIAR_STUDENT", "MAKE_STUDENT", "export_hiar_student", "load_hiar_student", "read_hiar_student",
           "set_student_defaults"]
INFERENCE_DEFAULTS = ("window", "sink_frames", "order", "denoising_steps", "num_frames")

HIAR_STUDENT = ASSETS / "hiar_student.safetensors"
MAKE_STUDENT = "fdistill distill-video --config configs/moving_digits_hiar.yaml"


def export_hiar_student(model: nn.Module, label_embedding: LabelEmbedding, metadata: dict[str, Any],
                        path: str | Path) -> Path:
    """Write the student asset (atomic rename); ``metadata`` as described in the module docstring."""

    path = Path(path)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state.update({f"label_embedding.{k}": v for k, v in label_embedding.state_dict().items()})
    meta = {**metadata, "model_config": {k: v for k, v in dict(model.config).items() if not k.startswith("_")},
            "label_embedding": label_embedding.config()}
    return atomic_save_file(state, path, metadata={"fdistill": json.dumps(meta)})


def set_student_defaults(path: str | Path, reason: str, **defaults: Any) -> dict[str, Any]:
    """Change a student asset's inference defaults (``window``, ``sink_frames``, ``order``, ``denoising_steps``,
    ``num_frames``) in place, weights untouched; ``reason`` (e.g. the command that chose them) is recorded in
    the metadata's ``defaults_history``. Validated by building the pipeline before the file is replaced.
    Returns the new metadata."""
    bad = sorted(set(defaults) - set(INFERENCE_DEFAULTS))
    if bad:
        raise ValueError(f"not an inference default: {', '.join(bad)}; valid: {', '.join(INFERENCE_DEFAULTS)}")
    meta, state = read_hiar_student(path)
    old = {k: meta.get(k) for k in defaults}
    meta = {**meta, **defaults, "defaults_history": [*meta.get("defaults_history", []),
                                                     {"from": old, "to": defaults, "reason": reason}]}
    HiARPipeline(transformer=None, scheduler=None, **{k: meta[k] for k in INFERENCE_DEFAULTS if k in meta})
    atomic_save_file(state, path, metadata={"fdistill": json.dumps(meta)})
    return meta


def read_hiar_student(path: str | Path | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(metadata, state dict) of a student asset; a missing default asset names the command that makes it."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else HIAR_STUDENT
    if not path.is_file():
        raise FileNotFoundError(
            f"no HiAR student at {str(path)!r}: train one with `{MAKE_STUDENT}` (it writes "
            "<output_dir>/hiar_student.safetensors) and pass its path, or copy it to that location")
    check_safetensors(path)
    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("fdistill", "null") or "null")
    if not isinstance(meta, dict):
        raise ValueError(f"{str(path)!r} is not a HiAR student asset (no 'fdistill' metadata)")
    return meta, load_file(str(path))


def load_hiar_student(path: str | Path | None = None) -> HiARPipeline:
    """A ready :class:`HiARPipeline` from a student asset (default: the shipped one).

    The pipeline's config carries the student's defaults, so ``pipe()`` alone generates a video
    (unconditional; ``pipe(labels=[3])`` for a digit).
    """
    meta, state = read_hiar_student(path)
    model = CausalWanTransformer3DModel.from_config(meta["model_config"])
    model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")}, strict=True)
    embedding = LabelEmbedding(**meta["label_embedding"])
    embedding.load_state_dict({k[16:]: v for k, v in state.items() if k.startswith("label_embedding.")}, strict=True)
    return HiARPipeline(
        transformer=model.eval(), scheduler=FlowMatchEulerDiscreteScheduler(shift=meta["shift"]),
        label_embedding=LabelEmbeddingModel.from_label_embedding(embedding).eval(),
        frames_per_block=meta["frames_per_block"], denoising_steps=meta["denoising_steps"],
        context=meta["context"], num_frames=meta["num_frames"], height=meta["height"], width=meta["width"],
        window=meta.get("window"), order=meta.get("order", "hierarchical"), sink_frames=meta.get("sink_frames", 0),
        guidance_scale=1.0,  # the teacher's guidance is distilled into the student: one forward per cell
    )
