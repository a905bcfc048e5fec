"""``fdistill sample-video`` and ``fdistill eval-video``: HiAR pipelines from the command line.

    fdistill sample-video PIPELINE --label 3 --order hierarchical --seed 0 --output video.mp4 [--parallel K]
    torchrun --nproc-per-node K $(which fdistill) sample-video PIPELINE --order pipelined --output v.npy
    fdistill eval-video video.npy|PIPELINE [--num-videos 16] [--output report.json]

PIPELINE is a HiARPipeline folder (``save_pretrained``), a stock diffusers Wan2.1 folder or a HiAR student
file (``hiar_student.safetensors``, as ``distill-video`` writes and ``fdistill/assets`` ships).

Generation flags left unset take the pipeline's saved config (num_frames, height, width,
frames_per_block, denoising_steps, window, sink_frames, order, guidance_scale, context, renoise).

Outputs by extension: ``.npy`` (B, F, H, W, C) float32 in [0, 1] with the model's own channels;
``.gif`` (Pillow) and ``.mp4`` (imageio-ffmpeg, the ``video`` extra) with the batch side by side.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

__all__ = [
    "add_eval_video_arguments",
    "add_sample_video_arguments",
    "eval_video_main",
    "load_video_pipeline",
    "read_video",
    "sample_video_main",
    "write_video",
]

VIDEO_SUFFIXES = (".npy", ".gif", ".mp4")


PIPELINES = ("a HiARPipeline folder (save_pretrained), a diffusers Wan2.1 folder or a HiAR student .safetensors "
             "(distill-video's hiar_student.safetensors)")
"""What ``sample-video`` and ``eval-video`` sample, for messages."""


def _add_generation_arguments(p: argparse.ArgumentParser) -> None:
    from fdistill.cli import positive_int

    p.add_argument("--order", default=None,
                   help="sequential, hierarchical, wavefront or pipelined (implied by --parallel and by torchrun; "
                        "default: the pipeline's)")
    p.add_argument("--parallel", type=positive_int, default=None, metavar="K",
                   help="run the pipelined order in K local processes (1 <= K <= denoising steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-frames", type=positive_int, default=None, help="frames (default: the pipeline's)")
    p.add_argument("--height", type=positive_int, default=None)
    p.add_argument("--width", type=positive_int, default=None)
    p.add_argument("--frames-per-block", type=positive_int, default=None)
    p.add_argument("--denoising-steps", default=None,
                   help="timesteps with commas (1000,750,500,250; one step: 1000,) or a step count K")
    p.add_argument("--window", type=positive_int, default=None, help="attention window in latent frames")
    p.add_argument("--sink-frames", type=int, default=None,
                   help="attention sink: the first N latent frames stay in the window (0: none; default: the "
                        "pipeline's)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance w (1: conditional only); single-process orders")
    p.add_argument("--context", default=None, help="next (t_k+1) or same (t_k): the context level")
    p.add_argument("--renoise", default=None, help="noise or ode: how x0 goes to the next step")
    p.add_argument("--no-fused-write", action="store_true", help="write KV caches in separate forwards")
    p.add_argument("--device", default="cpu")


def add_sample_video_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``fdistill sample-video`` (the lead's parser adds these to the subcommand)."""
    p.add_argument("pipeline", help=PIPELINES)
    p.add_argument("--output", required=True, help="output file: .npy, .gif or .mp4")
    p.add_argument("--label", type=int, action="append", default=None,
                   help="class label (repeat for a batch); label-conditioned pipelines. Default: the null label, "
                        "an unconditional video (no particular digit)")
    p.add_argument("--prompt", action="append", default=None, help="text prompt (repeat for a batch)")
    p.add_argument("--fps", type=float, default=8.0)
    _add_generation_arguments(p)


def add_eval_video_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``fdistill eval-video``."""
    from fdistill.cli import positive_int

    p.add_argument("input", help=f"a video file (.npy/.gif/.mp4), or {PIPELINES} to sample from")
    p.add_argument("--num-videos", type=positive_int, default=10,
                   help="videos to sample from a pipeline (labels cycle through the classes)")
    p.add_argument("--fps", type=float, default=8.0, help="frame rate for the dynamic-degree threshold")
    p.add_argument("--output", default=None, help="write the JSON report here too")
    _add_generation_arguments(p)


def _steps(text: str | None):
    if text is None:
        return None
    if "," not in text:
        return int(text)
    return [int(s) for s in text.split(",") if s.strip()]


def _torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def load_video_pipeline(source: str | os.PathLike, command: str, expected: str = PIPELINES, labelled: bool = False):
    """The HiARPipeline at ``source`` (see :data:`PIPELINES`); anything else stops, before any weights load, with a
    message naming what it is and what ``command`` expects (``expected``; ``labelled``: a label embedding)."""
    from fdistill.io import check_safetensors
    from fdistill.pipelines.hiar_pipeline import HiARPipeline
    from fdistill.pipelines.hiar_student import load_hiar_student
    from fdistill.pipelines.wan_loading import WAN_PIPELINES

    path = Path(source)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{str(source)!r} is a {path.suffix or 'suffix-less'} file; {command} expects {expected}")
        return load_hiar_student(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{str(source)!r} does not exist; {command} expects {expected}")
    index = json.loads((path / "model_index.json").read_text()) if (path / "model_index.json").is_file() else {}
    name = index.get("_class_name")
    if name not in ("HiARPipeline", *WAN_PIPELINES):
        what = f"a {name} folder" if name else "a folder without model_index.json"
        raise ValueError(f"{str(source)!r} is {what}; {command} expects {expected}")
    if labelled and (index.get("label_embedding") or [None])[0] is None:
        raise ValueError(f"{str(source)!r} is a {name} folder without a label embedding (prompted); {command} samples "
                         "label-conditioned pipelines: sample it with sample-video --prompt and evaluate the video file")
    check_safetensors(path)
    return HiARPipeline.from_pretrained(path)


def _generate(args: argparse.Namespace, pipe, *, labels=None, prompts=None):
    """Run ``pipe`` (a HiARPipeline) and return its "pt" frames (B, F, C, H, W) in [0, 1]
    (None on the ranks other than 0 under torchrun)."""
    import torch
    import torch.distributed as dist

    order = args.order
    if args.parallel is not None and order not in (None, "pipelined"):
        raise ValueError(f"--parallel runs the pipelined order; it does not combine with --order {order}")
    if _torchrun():
        if order not in (None, "pipelined"):
            raise ValueError(f"under torchrun the order is pipelined, got --order {order}")
        order = "pipelined"
        if not dist.is_initialized():
            dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
        if args.device.startswith("cuda"):
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    elif args.parallel is not None:
        order = "pipelined"

    pipe = pipe.to(args.device)
    if _torchrun() and dist.get_rank() != 0:
        pipe.set_progress_bar_config(disable=True)
    frames = pipe(
        prompt=prompts, labels=labels, num_frames=args.num_frames, height=args.height, width=args.width,
        denoising_steps=_steps(args.denoising_steps), frames_per_block=args.frames_per_block, order=order,
        window=args.window, sink_frames=args.sink_frames, guidance_scale=args.guidance_scale, context=args.context,
        renoise=args.renoise,
        fused=not args.no_fused_write,
        num_processes=args.parallel, generator=torch.Generator(args.device).manual_seed(args.seed),
        output_type="pt",
    ).frames
    if _torchrun() and dist.get_rank() != 0:
        return None
    return frames.float().cpu()


def write_video(frames: np.ndarray, path: str | os.PathLike, fps: float = 8.0) -> Path:
    """Write (B, F, H, W, C) frames in [0, 1]: .npy as is; .gif / .mp4 with the batch side by side."""
    path = Path(path)
    if path.suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"unsupported output {path.name!r}; use one of {', '.join(VIDEO_SUFFIXES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, frames.astype(np.float32))
        return path
    import imageio.v2 as imageio

    tiled = np.concatenate(list(frames), axis=2)  # (F, H, B·W, C)
    if tiled.shape[-1] == 1:
        tiled = tiled.repeat(3, axis=-1)
    uint8 = (tiled.clip(0, 1) * 255).round().astype(np.uint8)
    if path.suffix == ".gif":
        imageio.mimsave(path, list(uint8), duration=1000 / fps, loop=0)
        return path
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        raise ValueError("writing .mp4 needs imageio-ffmpeg (pip install 'fdistill[video]'); "
                         "or write .gif or .npy") from None
    imageio.mimsave(path, list(uint8), fps=fps, macro_block_size=1)
    return path


def read_video(path: str | os.PathLike):
    """Videos (B, C, F, H, W) in [-1, 1] from a .npy written by :func:`write_video` ((B, F, H, W, C)
    or (F, H, W, C) in [0, 1]) or from a .gif / .mp4 (one video, grey if its channels agree)."""
    import torch

    path = Path(path)
    if path.suffix == ".npy":
        frames = np.load(path)
    elif path.suffix in (".gif", ".mp4"):
        import imageio.v2 as imageio

        frames = np.stack([np.asarray(f)[..., :3] for f in imageio.mimread(path, memtest=False)]) / 255.0
        if frames.ndim == 3:
            frames = frames[..., None]
        if np.allclose(frames, frames[..., :1], atol=1 / 255):
            frames = frames[..., :1]
    else:
        raise ValueError(f"unsupported video {path.name!r}; use one of {', '.join(VIDEO_SUFFIXES)}")
    if frames.ndim == 4:
        frames = frames[None]
    if frames.ndim != 5:
        raise ValueError(f"expected (B, F, H, W, C) or (F, H, W, C) frames in {path.name}, got {frames.shape}")
    return torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).permute(0, 4, 1, 2, 3) * 2 - 1


def sample_video_main(args: argparse.Namespace) -> None:
    """``fdistill sample-video``: sample a HiARPipeline and write the video(s)."""
    suffix = Path(args.output).suffix
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"unsupported output {args.output!r}; use one of {', '.join(VIDEO_SUFFIXES)}")
    pipe = load_video_pipeline(args.pipeline, "sample-video")
    frames = _generate(args, pipe, labels=args.label, prompts=args.prompt)
    if frames is None:
        return
    path = write_video(frames.permute(0, 1, 3, 4, 2).numpy(), args.output, args.fps)
    print(f"wrote {tuple(frames.shape[:2])} (videos, frames) to {path}")


def eval_video_main(args: argparse.Namespace) -> dict:
    """``fdistill eval-video``: VBench-style metrics (``fdistill.eval.video``) of a file or a pipeline."""
    from fdistill.eval.video import as_videos, evaluate_video

    source = Path(args.input)
    if source.is_dir() or source.suffix == ".safetensors":
        pipe = load_video_pipeline(source, "eval-video", f"a video file ({', '.join(VIDEO_SUFFIXES)}) or {PIPELINES}",
                                   labelled=True)
        num_classes = pipe.label_embedding.config.num_classes
        frames = _generate(args, pipe, labels=[i % num_classes for i in range(args.num_videos)])
        if frames is None:
            return {}
        videos = as_videos(frames, layout="pt")
    elif source.is_file():
        videos = read_video(source)
    else:
        raise FileNotFoundError(f"{args.input!r} is neither a video file nor a pipeline folder")
    report = {"input": str(source), "num_videos": videos.shape[0], "num_frames": videos.shape[2],
              **evaluate_video(videos, fps=args.fps)}
    text = json.dumps(report, indent=1)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    print(text)
    return report
