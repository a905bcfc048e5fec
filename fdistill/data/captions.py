"""Captioned image data as users bring it: image folders and webdataset tar shards.

* **Image folder** (the layout of diffusers' training examples): images with a ``metadata.jsonl`` whose lines
  name a ``file_name`` and a caption column (``text`` by default), or images each with a ``.txt`` caption of
  the same stem.
* **webdataset**: tar shards (``data/shard-{000000..000099}.tar``) of samples with an image (``jpg``,
  ``png`` or ``webp``) and a ``txt`` caption, read with the ``webdataset`` library: shards split over the
  ranks, in a fixed order, so a run that knows how many samples a rank has consumed resumes where it was.

Images are resized so the shorter side is ``resolution``, centre-cropped to a square and mapped to [−1, 1],
as diffusers' text-to-image training scripts prepare them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["IMAGE_SUFFIXES", "image_tensor", "read_image_folder", "webdataset_samples"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def image_tensor(image, resolution: int, channels: int = 3) -> Tensor:
    """A PIL image as (channels, resolution, resolution) in [−1, 1]: shorter side resized, centre-cropped."""
    from PIL import Image

    image = image.convert("L" if channels == 1 else "RGB")
    scale = resolution / min(image.size)
    w, h = max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))
    image = image.resize((w, h), Image.BICUBIC)
    left, top = (w - resolution) // 2, (h - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array[None] if channels == 1 else array.transpose(2, 0, 1).copy())


def read_image_folder(folder: str | Path, caption_column: str = "text") -> list[tuple[Path, str]]:
    """(image path, caption) pairs of an image folder, from ``metadata.jsonl`` or ``.txt`` sidecars, sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"data.path {str(folder)!r} is not a folder")
    metadata = folder / "metadata.jsonl"
    pairs = []
    if metadata.is_file():
        for i, line in enumerate(metadata.read_text().splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "file_name" not in row or caption_column not in row:
                raise ValueError(f"{metadata}:{i} needs 'file_name' and the caption column {caption_column!r}; "
                                 f"it has {sorted(row)}")
            path = folder / row["file_name"]
            if not path.is_file():
                raise ValueError(f"{metadata}:{i} names {row['file_name']!r}, which is not in {folder}")
            pairs.append((path, str(row[caption_column])))
    else:
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            caption = path.with_suffix(".txt")
            if not caption.is_file():
                raise ValueError(f"{path} has no caption: give {caption.name} beside it or a metadata.jsonl in "
                                 f"{folder} with file_name and {caption_column!r}")
            pairs.append((path, caption.read_text().strip()))
    if not pairs:
        raise ValueError(f"{folder} holds no captioned images (suffixes {', '.join(IMAGE_SUFFIXES)})")
    return sorted(pairs)


def webdataset_samples(urls: str, resolution: int, channels: int = 3, skip: int = 0,
                       rank: int = 0, world: int = 1, once: bool = False) -> Iterator[tuple[Tensor, str]]:
    """(image (C, R, R) in [−1, 1], caption) of this rank's shards (shard i goes to rank i mod world), in
    order, after skipping ``skip`` samples already consumed, and again from the start when they run out
    (``once``: a single pass)."""
    import webdataset as wds

    shards = list(wds.shardlists.expand_urls(urls))
    mine = shards[rank::world]
    if len(shards) < world:
        raise ValueError(f"data.path {urls!r} has {len(shards)} shard(s) for {world} ranks: give at least one per rank")
    seen = 0
    while True:
        dataset = wds.WebDataset(mine, shardshuffle=False, nodesplitter=None, empty_check=False).decode("pil")
        count = 0
        for sample in dataset:
            key = next((k for k in ("jpg", "jpeg", "png", "webp") if k in sample), None)
            if key is None or "txt" not in sample:
                raise ValueError(f"webdataset sample {sample.get('__key__')!r} needs an image (jpg/png/webp) and a txt")
            count += 1
            seen += 1
            if seen <= skip:
                continue
            yield image_tensor(sample[key], resolution, channels), str(sample["txt"]).strip()
        if count == 0:
            raise ValueError(f"the shards {mine} hold no samples")
        if once:
            return
