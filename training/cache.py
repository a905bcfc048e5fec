"""One cache for teacher outputs that cost minutes to make (ODE pairs, video trajectories, warm starts).

A cached entry is one safetensors file ``<folder>/<name>-<key>.safetensors`` whose key is a hash of
the settings that made it; the settings themselves are stored in the file's metadata and compared
when it is read, so a changed setting makes a new entry and a file is never reused for other settings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fdistill.io import atomic_save_file

__all__ = ["cache_path", "cached_tensors"]


def _settings_json(settings: dict[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


def cache_path(folder: str | Path, name: str, settings: dict[str, Any]) -> Path:
    """Where the entry ``name`` made with ``settings`` lives in ``folder``."""
    key = hashlib.sha256(_settings_json(settings).encode()).hexdigest()[:16]
    return Path(folder) / f"{name}-{key}.safetensors"


def cached_tensors(folder: str | Path | None, name: str, settings: dict[str, Any],
                   make: Callable[[], dict[str, Tensor]], write: bool = True,
                   device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """The tensors ``make()`` returns for ``settings``: read from the cache when an entry with exactly these
    settings exists, else made and (when ``write`` and ``folder`` is set) stored for the next run."""
    from safetensors import safe_open

    text = _settings_json(settings)
    path = cache_path(folder, name, settings) if folder is not None else None
    if path is not None and path.is_file():
        with safe_open(str(path), "pt") as f:  # the record first, the tensors only when it matches
            if (f.metadata() or {}).get("settings") == text:
                return {k: f.get_tensor(k).to(device) for k in f.keys()}  # noqa: SIM118 (safe_open has no items)
    data = make()
    if path is not None and write:
        atomic_save_file(data, path, metadata={"settings": text})
    return {k: v.to(device) for k, v in data.items()}
