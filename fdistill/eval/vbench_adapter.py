"""Run VBench proper in its own Python environment.

VBench pins old dependencies (transformers 4.33, numpy < 2) that cannot share an environment with
fdistill, so it runs as a subprocess of a separate interpreter: pass `python=` or set
$FDISTILL_VBENCH_PYTHON to e.g. `/opt/vbench-env/bin/python`. Videos go through a folder of mp4
files (`write_mp4s`), VBench runs in "custom_input" mode, and its `*_eval_results.json` is read
back. When no interpreter with `vbench` is available, `run_vbench` returns None with a warning,
or raises `VBenchUnavailable` with `required=True`. VBench downloads its own checkpoints (DINO,
RAFT, ...) unless they are already in its cache; that happens inside its environment, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from fdistill.eval.fid import to_uint8

VBENCH_PYTHON_ENV = "FDISTILL_VBENCH_PYTHON"
DEFAULT_DIMENSIONS: tuple[str, ...] = (
    "subject_consistency",
    "background_consistency",
    "temporal_flickering",
    "motion_smoothness",
    "dynamic_degree",
)

# Runs inside the VBench interpreter; argv[1] is a JSON dict of arguments.
_DRIVER = """
import inspect, json, os, sys
import torch
import vbench
from vbench import VBench
args = json.loads(sys.argv[1])
full_info = os.path.join(os.path.dirname(vbench.__file__), "VBench_full_info.json")
bench = VBench(torch.device(args["device"]), full_info, args["output_dir"])
kwargs = dict(videos_path=args["videos_dir"], name=args["name"],
              dimension_list=args["dimensions"], local=args["local"])
if "mode" in inspect.signature(bench.evaluate).parameters:
    kwargs["mode"] = "custom_input"
bench.evaluate(**kwargs)
"""


class VBenchUnavailable(RuntimeError):
    """No Python interpreter with the `vbench` package was found."""


def find_vbench_python(python: str | os.PathLike | None = None) -> str:
    """The interpreter to run VBench with (`python`, else $FDISTILL_VBENCH_PYTHON), checked by
    importing `vbench` in it. Raises VBenchUnavailable saying what is missing."""
    candidate = python if python is not None else os.environ.get(VBENCH_PYTHON_ENV)
    if not candidate:
        raise VBenchUnavailable(
            f"VBench is not configured: set {VBENCH_PYTHON_ENV} (or pass python=) to the interpreter "
            "of a separate environment with `pip install vbench`"
        )
    exe = str(candidate)
    try:
        probe = subprocess.run([exe, "-c", "import vbench"], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise VBenchUnavailable(f"cannot run VBench interpreter {exe}: {err}") from err
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise VBenchUnavailable(f"`import vbench` fails in {exe}: {last}")
    return exe


def write_mp4s(
    videos: torch.Tensor,
    folder: str | os.PathLike,
    fps: float = 8.0,
    min_size: int = 256,
    prefix: str = "video",
) -> list[Path]:
    """Write videos (B, C, F, H, W) in [-1, 1] as mp4 files `{prefix}-{i:05d}.mp4` (mp4v codec).

    Frames are upscaled with nearest-neighbour interpolation so the shorter side is at least
    `min_size` (VBench's networks expect ~224 px inputs); grey videos are written as RGB.
    """
    import cv2  # the `video` extra

    if videos.ndim != 5:
        raise ValueError(f"videos must be (B, C, F, H, W), got {tuple(videos.shape)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _, c, _, h, w = videos.shape
    scale = max(1, -(-min_size // min(h, w)))
    paths = []
    for i, video in enumerate(videos):
        frames = video.permute(1, 0, 2, 3).float()  # (F, C, H, W)
        frames = F.interpolate(frames, scale_factor=scale, mode="nearest") if scale > 1 else frames
        frames = frames.expand(-1, 3, -1, -1) if c == 1 else frames
        rgb = to_uint8(frames).permute(0, 2, 3, 1).numpy()
        path = folder / f"{prefix}-{i:05d}.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w * scale, h * scale))
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write mp4 files ({path})")
        for frame in rgb:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        paths.append(path)
    return paths


def run_vbench(
    videos_dir: str | os.PathLike,
    dimensions: Sequence[str] = DEFAULT_DIMENSIONS,
    python: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    device: str = "cuda",
    local: bool = False,
    required: bool = False,
    timeout: float | None = None,
) -> dict[str, float] | None:
    """VBench scores {dimension: score} for a folder of mp4 files.

    Args:
        videos_dir: folder of videos (see `write_mp4s`); file names serve as prompts.
        dimensions: VBench dimensions that need no prompt suite (custom_input mode).
        python: VBench interpreter (default $FDISTILL_VBENCH_PYTHON).
        output_dir: where VBench writes its json (default: a temporary folder).
        local: VBench's `load_ckpt_from_local` flag (checkpoints already in its cache).
        required: raise VBenchUnavailable instead of returning None when VBench is missing.
    """
    try:
        exe = find_vbench_python(python)
    except VBenchUnavailable as err:
        if required:
            raise
        warnings.warn(f"skipping VBench: {err}", stacklevel=2)
        return None
    with tempfile.TemporaryDirectory(prefix="fdistill-vbench-") as tmp:
        out = Path(output_dir) if output_dir is not None else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        args = {
            "videos_dir": str(Path(videos_dir).resolve()),
            "dimensions": list(dimensions),
            "output_dir": str(out.resolve()),
            "name": "fdistill",
            "device": device,
            "local": local,
        }
        proc = subprocess.run([exe, "-c", _DRIVER, json.dumps(args)], capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"VBench failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        results = json.loads((out / "fdistill_eval_results.json").read_text())
    # VBench stores each dimension as [mean score, per-video results]
    return {dim: float(value[0]) for dim, value in results.items()}
