"""Files written so that a crash never leaves half of one: write beside the target, then rename over it.

A rename within one folder is atomic on POSIX filesystems, so a reader sees the old file or the new
one, never a mixture. Files are made world-readable (0644) and folders 0755, whatever the writer's
temporary modes were, since assets and exported pipelines are shipped and shared.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_folder", "atomic_save_file", "atomic_write_text", "check_safetensors", "read_jsonl"]


def _temp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    tmp.write_text(text)
    tmp.chmod(0o644)
    os.replace(tmp, path)
    return path


def atomic_save_file(tensors: dict[str, Any], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file`` of contiguous CPU copies of ``tensors``, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.chmod(0o644)
    os.replace(tmp, path)
    return path


def check_safetensors(path: str | os.PathLike) -> None:
    """Raise a ValueError naming the first ``.safetensors`` file at ``path`` (the file, or every one under the
    folder) that is truncated or corrupt; reads only the headers. A missing ``path`` is left to its loader.

    safetensors' own error would otherwise surface through diffusers' loader, which retries the file as
    text and ends in an unrelated UnicodeDecodeError.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    for file in sorted(path.rglob("*.safetensors")) if path.is_dir() else [path] if path.is_file() else []:
        try:
            with safe_open(str(file), "pt"):
                pass
        except SafetensorError as e:
            raise ValueError(f"{str(file)!r} is truncated or corrupt, not a complete safetensors file ({e})") from e


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (an old one is removed), on
    an error it is deleted and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        for item in [tmp, *tmp.rglob("*")]:
            item.chmod(0o755 if item.is_dir() else 0o644)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_jsonl(path: str | os.PathLike) -> list[tuple[str, dict]]:
    """(line, record) for each JSON line of the append-only log ``path`` ([] when it does not exist).

    A line a kill cut in half can only be the last one written: it and anything after it are dropped.
    """
    path = Path(path)
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        if not line.strip():
            continue
        try:
            rows.append((line, json.loads(line)))
        except json.JSONDecodeError:
            break
    return rows


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    """Lay out a matplotlib figure, write it to ``path`` atomically (the format from the suffix) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
    plt.close(fig)

