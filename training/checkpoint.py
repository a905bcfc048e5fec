"""Crash-safe checkpoints on top of ``accelerate``'s ``save_state``/``load_state``.

A checkpoint is a folder ``checkpoint-<step>`` holding accelerate's state (prepared optimizers,
RNG states), one ``<name>.safetensors`` (+ ``<name>.json`` for non-tensor entries) per module or
stateful object passed in ``modules`` (networks, EMA weights, the ratio normaliser), and
``trainer_state.json``. Module states are never pickled, so resuming never unpickles code. It is written into a hidden temporary folder
and renamed into place, so a crash mid-write never leaves a half checkpoint that ``--resume``
would pick up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from fdistill.io import atomic_write_text, read_jsonl

_NAME = re.compile(r"^checkpoint-(\d+)$")


def read_metrics(path: str | Path, step: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(line, row) of a JSONL log (:func:`fdistill.io.read_jsonl`), up to ``step`` when given."""
    return [(ln, r) for ln, r in read_jsonl(path) if step is None or r.get("step", 0) <= step]


def truncate_metrics(path: str | Path, step: int) -> None:
    """Drop JSONL log lines written after ``step`` (the checkpoint a run resumes from)."""
    if Path(path).is_file():
        atomic_write_text(path, "".join(ln + "\n" for ln, _ in read_metrics(path, step)))


def start_from(run: str | Path, checkpoint: str | Path) -> None:
    """Start ``run`` from a copy of ``checkpoint`` (another run's) unless ``run`` has a checkpoint of its own:
    how a study makes every variant continue one shared warm-up. ``--resume latest`` then picks it up."""
    run = Path(run)
    if latest_checkpoint(run) is None:
        run.mkdir(parents=True, exist_ok=True)
        shutil.copytree(checkpoint, run / Path(checkpoint).name, dirs_exist_ok=True)


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


def _flatten_state(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split a state dict into tensors (lists of tensors indexed) and JSON-able values."""
    tensors, other = {}, {}
    for k, v in state.items():
        if isinstance(v, Tensor):
            tensors[k] = v.detach().cpu().contiguous()
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, Tensor) for x in v):
            other[k] = {"__tensor_list__": len(v)}
            tensors.update({f"{k}.{i}": x.detach().cpu().contiguous() for i, x in enumerate(v)})
        else:
            other[k] = v
    return tensors, other


def _unflatten_state(tensors: dict[str, Tensor], other: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for k, v in other.items():
        if isinstance(v, dict) and "__tensor_list__" in v:
            state[k] = [tensors.pop(f"{k}.{i}") for i in range(v["__tensor_list__"])]
        else:
            state[k] = v
    state.update(tensors)
    return state


def save_states(folder: Path, modules: dict[str, Any]) -> None:
    """Write ``obj.state_dict()`` of each named object as safetensors + json."""
    from safetensors.torch import save_file

    for name, obj in modules.items():
        tensors, other = _flatten_state(obj.state_dict())
        save_file(tensors, str(folder / f"{name}.safetensors"))
        (folder / f"{name}.json").write_text(json.dumps(other))


def load_states(folder: Path, modules: dict[str, Any]) -> None:
    """Inverse of :func:`save_states` (safetensors only)."""
    from safetensors.torch import load_file

    for name, obj in modules.items():
        if not (folder / f"{name}.safetensors").is_file():
            raise FileNotFoundError(f"checkpoint {folder} has no state for {name!r}")
        other = json.loads((folder / f"{name}.json").read_text())
        obj.load_state_dict(_unflatten_state(load_file(str(folder / f"{name}.safetensors")), other))


def save_checkpoint(accelerator, output_dir: str | Path, step: int, state: dict[str, Any],
                    keep: int = 2, modules: dict[str, Any] | None = None,
                    sharded: Callable[[Path], None] | None = None) -> Path:
    """Save accelerate state, ``modules`` and ``state`` as ``checkpoint-<step>`` atomically.

    Keeps the newest ``keep`` checkpoints. ``modules`` maps names to objects with
    ``state_dict``/``load_state_dict`` (identical on every rank: only the main process writes them);
    ``sharded(folder)`` runs on every rank and writes each rank's shards (FSDP) into the same folder.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if sharded is not None:
        sharded(tmp)
    accelerator.wait_for_everyone()  # every rank has written its RNG state (and shards) before the rename
    if accelerator.is_main_process:
        save_states(tmp, modules or {})
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **state}, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str | Path, modules: dict[str, Any] | None = None,
                    sharded: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Restore accelerate state, ``modules`` and (``sharded(folder)`` on every rank) the shards from ``path``;
    returns its ``trainer_state.json``."""
    path = Path(path)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no trainer_state.json)")
    accelerator.load_state(str(path))
    load_states(path, modules or {})
    if sharded is not None:
        sharded(path)
    return json.loads((path / "trainer_state.json").read_text())


def resolve_resume(resume: str | bool | None, output_dir: str | Path) -> Path | None:
    """``--resume`` semantics: a path, or ``latest``/True for the newest checkpoint (None if none)."""
    if resume in (None, False, "", "none"):
        return None
    if resume in (True, "latest", "auto"):
        return latest_checkpoint(output_dir)
    path = Path(str(resume))
    if not path.exists():
        raise FileNotFoundError(f"--resume {str(path)!r} is neither 'latest' (the newest checkpoint of {str(output_dir)!r}) "
                                "nor an existing checkpoint folder")
    return path
