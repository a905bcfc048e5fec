"""A latent cache: captioned images encoded once by a teacher's VAE and text encoders.

``fdistill cache`` writes it; ``data.name=cache`` trains from it without loading the VAE or a text encoder.
The folder holds shards ``cache-00000.safetensors`` … (``latents`` (n, C, h, w) as the denoiser sees them,
``conditions`` (n, D): the family's packed prompt conditions; the captions in the shard's metadata),
``null.safetensors`` (the unconditional input of classifier-free guidance) and ``cache.json`` (the teacher
folder, its family, the resolution, the VAE factor, the layout of the packed conditions and the count).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..io import atomic_save_file, atomic_write_text

__all__ = ["LatentCache", "read_latent_cache", "write_latent_cache"]


@dataclass
class LatentCache:
    latents: Tensor
    conditions: Tensor
    captions: list[str]
    null: Tensor
    meta: dict


def write_latent_cache(family, samples: Iterable[tuple[Tensor, str]], folder: str | Path, batch_size: int = 64,
                       shard_size: int = 1024, teacher: str = "", progress: bool = True) -> Path:
    """Encode ``samples`` ((C, H, W) images in [−1, 1], caption) with ``family``'s VAE and text encoders into
    shards of ``shard_size`` under ``folder`` (each shard written atomically)."""
    from tqdm.auto import tqdm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shard: dict[str, list] = {"latents": [], "conditions": [], "captions": []}
    batch: list[tuple[Tensor, str]] = []
    shards, count = 0, 0

    def flush_batch() -> None:
        images = torch.stack([x for x, _ in batch])
        captions = [c for _, c in batch]
        shard["latents"].append(family.latents_from_images(images, batch_size))
        shard["conditions"].append(family.conditions(captions))
        shard["captions"] += captions
        batch.clear()

    def flush_shard() -> None:
        nonlocal shards, count
        if not shard["captions"]:
            return
        atomic_save_file({"latents": torch.cat(shard["latents"]), "conditions": torch.cat(shard["conditions"])},
                         folder / f"cache-{shards:05d}.safetensors", metadata={"captions": json.dumps(shard["captions"])})
        count += len(shard["captions"])
        shards += 1
        shard.update(latents=[], conditions=[], captions=[])

    for item in tqdm(samples, desc="encoding", unit="image", disable=not progress):
        batch.append(item)
        if len(batch) == min(batch_size, shard_size - len(shard["captions"])):
            flush_batch()
            if len(shard["captions"]) >= shard_size:
                flush_shard()
    if batch:
        flush_batch()
    flush_shard()
    if count == 0:
        raise ValueError("no samples to cache")
    atomic_save_file({"null": family.null_condition()}, folder / "null.safetensors")
    meta = {"teacher": teacher, "family": family.name, "resolution": [family.height, family.width],
            "vae_scale_factor": family.vae_scale_factor, "layout": family.layout_record(), "count": count,
            "shards": shards}
    atomic_write_text(folder / "cache.json", json.dumps(meta, indent=1) + "\n")
    return folder


def read_latent_cache(folder: str | Path) -> LatentCache:
    """Everything :func:`write_latent_cache` wrote, in memory."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "cache.json").is_file():
        raise ValueError(f"data.path {str(folder)!r} is not a latent cache (no cache.json): make one with "
                         "`fdistill cache`")
    meta = json.loads((folder / "cache.json").read_text())
    latents, conditions, captions = [], [], []
    for i in range(meta["shards"]):
        with safe_open(str(folder / f"cache-{i:05d}.safetensors"), "pt") as f:
            latents.append(f.get_tensor("latents"))
            conditions.append(f.get_tensor("conditions"))
            captions += json.loads(f.metadata()["captions"])
    return LatentCache(torch.cat(latents), torch.cat(conditions), captions,
                       load_file(str(folder / "null.safetensors"))["null"], meta)
