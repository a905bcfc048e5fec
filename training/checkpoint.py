"""Crash-safe checkpoints on top of ``accelerate``'s ``save_state``/``load_state``.

A checkpoint is a folder ``checkpoint-<step>`` holding accelerate's state (models, optimizers,
objects registered with ``register_for_checkpointing`` such as EMA weights and the ratio
normaliser, RNG states) plus ``trainer_state.json``. It is written into a hidden temporary folder
and renamed into place, so a crash mid-write never leaves a half checkpoint that ``--resume``
would pick up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

_NAME = re.compile(r"^checkpoint-(\d+)$")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file via a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _NAME.match(p.name))
             and (p / "trainer_state.json").is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def save_checkpoint(accelerator, output_dir: str | Path, step: int, state: dict[str, Any],
                    keep: int = 2) -> Path:
    """Save accelerate state + ``state`` as ``checkpoint-<step>`` atomically; keep the newest ``keep``."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **state}, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str | Path) -> dict[str, Any]:
    """Restore accelerate state from ``path``; returns its ``trainer_state.json``."""
    path = Path(path)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no trainer_state.json)")
    accelerator.load_state(str(path))
    return json.loads((path / "trainer_state.json").read_text())


def resolve_resume(resume: str | bool | None, output_dir: str | Path) -> Path | None:
    """``--resume`` semantics: a path, or ``latest``/True for the newest checkpoint (None if none)."""
    if resume in (None, False, "", "none"):
        return None
    if resume in (True, "latest", "auto"):
        return latest_checkpoint(output_dir)
    path = Path(str(resume))
    if not path.exists():
        raise FileNotFoundError(f"--resume {str(path)!r} does not exist")
    return path
