"""VBench-style video metrics that run offline on small videos.

Every metric takes videos in any of three layouts, the ones the HiAR pipeline returns
(``layout`` names its ``output_type``):

- "latent": torch (B, C, F, H, W) in [-1, 1], the metrics' own layout (``output_type="latent"``
  of a pipeline without a VAE, ``read_video``, the data sets' clips);
- "pt": torch (B, F, C, H, W) in [0, 1] (``output_type="pt"``);
- "np": NumPy (B, F, H, W, C) in [0, 1] (``output_type="np"``; grey videos arrive as three equal
  channels and are read back as one).

With ``layout=None`` a NumPy array is "np"; a tensor is "latent" when dim 1 holds the channels
(1 or 3) and "pt" when dim 2 does and its values lie in [0, 1]. A tensor that fits both (e.g. 3
frames of grey) or neither raises, asking for ``layout``. ``as_videos`` does the conversion.

Each metric follows the VBench definition, with the network VBench uses (DINO, RAFT) replaced by
what is available offline (the digits classifier, OpenCV Farneback flow) unless a local weights
file is given:

- temporal flickering: 1 - mean |I_f - I_{f+1}| / 255 over consecutive uint8 frames.
- subject consistency: mean over f >= 1 of (max(0, cos(z_f, z_{f-1})) + max(0, cos(z_f, z_0))) / 2,
  z = per-frame features.
- dynamic degree: a video is dynamic when at least round(4 F / 16) frame pairs have a mean
  top-5% optical-flow magnitude above 6 * min(H, W) / 256 * max(1, 8 / fps) pixels.
- temporal drift: per-frame quality of the last segment of frames against the first (classifier
  confidence, and Fréchet distance of their features, to a reference set when one is given).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fdistill.eval.fid import class_coverage, fid_from_features, resolve_classifier, to_classifier_input, to_uint8
from fdistill.models.classifier import DigitsClassifier

Videos = torch.Tensor | np.ndarray
"""Videos in one of ``LAYOUTS``."""

LAYOUTS: dict[str, str] = {
    "latent": "torch (B, C, F, H, W) in [-1, 1]",
    "pt": "torch (B, F, C, H, W) in [0, 1], output_type='pt'",
    "np": "NumPy (B, F, H, W, C) in [0, 1], output_type='np'",
}
CHANNELS = (1, 3)


def _layout_hint() -> str:
    return "; ".join(f"layout={name!r}: {text}" for name, text in LAYOUTS.items())


def _detect_layout(videos: Videos) -> str:
    if isinstance(videos, np.ndarray):
        return "np"
    fits = []
    if videos.shape[1] in CHANNELS:
        fits.append("latent")
    if videos.shape[2] in CHANNELS and videos.numel() and 0 <= videos.min() and videos.max() <= 1:
        fits.append("pt")
    if len(fits) != 1:
        what = "fits both 'latent' and 'pt'" if fits else "fits no layout"
        raise ValueError(f"videos of shape {tuple(videos.shape)} {what}: pass layout= ({_layout_hint()})")
    return fits[0]


def as_videos(videos: Videos, layout: str | None = None) -> torch.Tensor:
    """Videos in any of ``LAYOUTS`` (``layout=None``: detected, see the module docstring) as the
    metrics' own (B, C, F, H, W) float tensor in [-1, 1]."""
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    if videos.ndim != 5:
        raise ValueError(f"videos must be 5-D ({_layout_hint()}), got shape {tuple(videos.shape)}")
    layout = layout or _detect_layout(videos)
    x = torch.from_numpy(np.ascontiguousarray(videos)) if isinstance(videos, np.ndarray) else videos
    if layout == "latent":
        return x
    x = x.permute(0, 4, 1, 2, 3) if layout == "np" else x.permute(0, 2, 1, 3, 4)
    if x.shape[1] == 3 and torch.equal(x[:, :1].expand_as(x), x):
        x = x[:, :1]  # the pipeline's grey RGB: one channel, as the digits metrics expect
    return x.float() * 2 - 1


def _frames(videos: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B * F, C, H, W), frames of a video contiguous."""
    b, c, f, h, w = videos.shape
    return videos.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def temporal_flickering(videos: Videos, layout: str | None = None) -> torch.Tensor:
    """VBench temporal flickering per video: (255 - mean |I_f - I_{f+1}|) / 255 on uint8 frames.

    videos: (B, C, F >= 2, H, W) in [-1, 1] (or another ``layout``) -> scores (B,) in [0, 1];
    1 = no change at all.
    """
    videos = as_videos(videos, layout)
    if videos.shape[2] < 2:
        raise ValueError("temporal flickering needs at least 2 frames")
    frames = to_uint8(videos).float()
    mae = (frames[:, :, 1:] - frames[:, :, :-1]).abs().mean(dim=(1, 3, 4))  # (B, F - 1)
    return (255.0 - mae.mean(dim=1)) / 255.0


@torch.no_grad()
def _frame_outputs(
    videos: torch.Tensor, classifier: DigitsClassifier | None, batch_size: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame classifier features (B, F, D) and class probabilities (B, F, K) of (B, C, F, H, W) videos."""
    model = resolve_classifier(classifier)
    device = next(model.parameters()).device
    frames = to_classifier_input(_frames(videos), model.config["image_size"])
    feats = torch.cat([model.features(frames[i : i + batch_size].to(device)).cpu()
                       for i in range(0, len(frames), batch_size)])
    probs = model.head(feats.to(device)).softmax(dim=1).cpu()
    b, f = videos.shape[0], videos.shape[2]
    return feats.reshape(b, f, -1), probs.reshape(b, f, -1)


def frame_features(videos: Videos, classifier: DigitsClassifier | None = None,
                   layout: str | None = None) -> torch.Tensor:
    """Classifier penultimate features of every frame: (B, C, F, H, W) in [-1, 1] -> (B, F, D)."""
    return _frame_outputs(as_videos(videos, layout), classifier)[0]


def frame_confidence(videos: Videos, classifier: DigitsClassifier | None = None,
                     layout: str | None = None) -> torch.Tensor:
    """Classifier confidence (max softmax probability) of every frame: -> (B, F) in [0, 1]."""
    return _frame_outputs(as_videos(videos, layout), classifier)[1].max(dim=-1).values


def _centroids(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Brightness centroid (row, col) in pixels of frames (..., H, W) in [-1, 1]: each (...)."""
    ink = (frames.float() + 1) / 2
    mass = ink.sum((-2, -1)).clamp_min(1e-6)
    rows = torch.arange(ink.shape[-2], dtype=torch.float32, device=frames.device)
    cols = torch.arange(ink.shape[-1], dtype=torch.float32, device=frames.device)
    return (ink.sum(-1) * rows).sum(-1) / mass, (ink.sum(-2) * cols).sum(-1) / mass


def centroid_speed(videos: Videos, layout: str | None = None) -> float:
    """Mean speed of the brightness centroid, pixels per frame: (B, 1, F, H, W) in [-1, 1] -> float."""
    videos = as_videos(videos, layout)
    r, c = _centroids(videos[:, 0])  # (B, F)
    return ((r[:, 1:] - r[:, :-1]) ** 2 + (c[:, 1:] - c[:, :-1]) ** 2).sqrt().mean().item()


def digit_crops(frames: torch.Tensor, glyph: int = 8, size: int = 16) -> torch.Tensor:
    """A glyph-sized window around each frame's brightness centroid, resized to the classifier's input.

    For moving digits the digit (``glyph`` px) is small on its canvas; centring it first is how the
    digits classifier can read it. frames: (N, 1, H, W) in [-1, 1] -> (N, 1, size, size).
    """
    if frames.ndim != 4 or frames.shape[1] != 1:
        raise ValueError(f"frames must be (N, 1, H, W), got {tuple(frames.shape)}")
    n, _, h, w = frames.shape
    if not 0 < glyph <= min(h, w):
        raise ValueError(f"glyph={glyph} must be in (0, {min(h, w)}] for {h}x{w} frames")
    r, c = _centroids(frames[:, 0])
    r = (r - (glyph - 1) / 2).round().clamp(0, h - glyph).long()
    c = (c - (glyph - 1) / 2).round().clamp(0, w - glyph).long()
    crops = torch.stack([frames[i, :, r[i] : r[i] + glyph, c[i] : c[i] + glyph] for i in range(n)])
    return F.interpolate(crops.float(), size=(size, size), mode="bilinear", align_corners=False)


def frame_accuracy(videos: Videos, labels: torch.Tensor, classifier: DigitsClassifier | None = None,
                   crop: bool = True, layout: str | None = None) -> float:
    """Fraction of frames the digits classifier assigns to their video's label.

    videos: (B, 1, F, H, W) in [-1, 1] (or another ``layout``); labels: (B,). ``crop``: classify
    ``digit_crops`` of each frame (moving digits) instead of the whole frame.
    """
    videos = as_videos(videos, layout)
    if labels.shape != (videos.shape[0],):
        raise ValueError(f"labels must be ({videos.shape[0]},), got {tuple(labels.shape)}")
    frames = _frames(videos)
    if crop:
        frames = digit_crops(frames)
    return class_coverage(frames, classifier, labels=labels.repeat_interleave(videos.shape[2]))["accuracy"]


def subject_consistency(
    videos: Videos, classifier: DigitsClassifier | None = None, features: torch.Tensor | None = None,
    layout: str | None = None,
) -> torch.Tensor:
    """VBench subject consistency per video, with classifier features in place of DINO.

    videos: (B, C, F >= 2, H, W) in [-1, 1] (or another ``layout``; or precomputed `features`
    (B, F, D)) -> (B,) in [0, 1].
    """
    z = frame_features(videos, classifier, layout) if features is None else features
    if z.shape[1] < 2:
        raise ValueError("subject consistency needs at least 2 frames")
    z = F.normalize(z.double(), dim=-1)
    to_previous = (z[:, 1:] * z[:, :-1]).sum(-1).clamp(min=0)
    to_first = (z[:, 1:] * z[:, :1]).sum(-1).clamp(min=0)
    return ((to_previous + to_first) / 2).mean(dim=1).float()


def _top5_mean(magnitude: np.ndarray) -> float:
    """VBench's per-pair motion score: mean of the largest 5% flow magnitudes."""
    flat = np.sort(magnitude.ravel())[::-1]
    return float(flat[: max(1, int(flat.size * 0.05))].mean())


def _farneback_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense flow (H, W, 2) between two uint8 grey frames; the pyramid stops at ~8 px."""
    import cv2  # the `video` extra

    levels = int(np.clip(math.floor(math.log2(min(a.shape) / 8)), 1, 5))
    return cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=levels, winsize=15,
                                        iterations=3, poly_n=5, poly_sigma=1.1, flags=0)


class _RaftFlow:
    """torchvision RAFT from a local state-dict file; frames upsampled to >= 128 px (multiple of 8)."""

    def __init__(self, weights: str | os.PathLike, model: str = "large") -> None:
        from torchvision.models.optical_flow import raft_large, raft_small

        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"RAFT weights not found at {path} (fdistill never downloads them)")
        builders = {"large": raft_large, "small": raft_small}
        if model not in builders:
            raise ValueError(f"RAFT model must be 'large' or 'small', got {model!r}")
        self.net = builders[model](weights=None).eval()
        self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    @torch.no_grad()
    def __call__(self, video: torch.Tensor) -> np.ndarray:
        """video: (C, F, H, W) in [-1, 1] -> flow (F - 1, H, W, 2) in input pixels."""
        x = video.float().permute(1, 0, 2, 3)
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        h, w = x.shape[-2:]
        scale = max(1.0, 128 / min(h, w))
        size = (8 * math.ceil(h * scale / 8), 8 * math.ceil(w * scale / 8))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        flow = self.net(x[:-1], x[1:], num_flow_updates=20)[-1]
        flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
        flow = flow * torch.tensor([w / size[1], h / size[0]]).view(1, 2, 1, 1)
        return flow.permute(0, 2, 3, 1).numpy()


def flow_magnitude(
    videos: Videos, raft_weights: str | os.PathLike | None = None, raft_model: str = "large",
    layout: str | None = None,
) -> torch.Tensor:
    """Per frame pair, the mean of the top-5% optical-flow magnitudes in pixels per frame.

    Farneback (OpenCV) on grey uint8 frames by default; torchvision RAFT when `raft_weights` (a
    local state-dict file) is given. videos: (B, C, F >= 2, H, W) (or another ``layout``) -> (B, F - 1).
    """
    videos = as_videos(videos, layout)
    if videos.shape[2] < 2:
        raise ValueError("optical flow needs at least 2 frames")
    raft = None if raft_weights is None else _RaftFlow(raft_weights, raft_model)
    grey = to_uint8(videos.float().mean(dim=1)).numpy()  # (B, F, H, W)
    scores = np.zeros((videos.shape[0], videos.shape[2] - 1))
    for i in range(videos.shape[0]):
        flows = raft(videos[i]) if raft is not None else [
            _farneback_flow(grey[i, f], grey[i, f + 1]) for f in range(videos.shape[2] - 1)]
        for f, flow in enumerate(flows):
            scores[i, f] = _top5_mean(np.sqrt((flow**2).sum(-1)))
    return torch.from_numpy(scores).float()


def dynamic_degree(
    videos: Videos,
    fps: float = 8.0,
    raft_weights: str | os.PathLike | None = None,
    magnitudes: torch.Tensor | None = None,
    layout: str | None = None,
) -> torch.Tensor:
    """VBench dynamic degree decision per video: (B, C, F, H, W) -> (B,) float in {0, 1}.

    Threshold 6 * min(H, W) / 256 * max(1, 8 / fps) px on the per-pair top-5% flow magnitude, and
    at least max(1, round(4 F / 16)) pairs above it (VBench's count, floored at 1 so very short
    clips are not dynamic by default). The mean over videos is VBench's score.
    """
    videos = as_videos(videos, layout)
    _, _, f, h, w = videos.shape
    mags = flow_magnitude(videos, raft_weights, layout="latent") if magnitudes is None else magnitudes
    threshold = max(1.0, 8.0 / fps) * 6.0 * min(h, w) / 256.0
    count = max(1, round(4 * f / 16))
    return ((mags > threshold).sum(dim=1) >= count).float()


def temporal_drift(
    videos: Videos,
    classifier: DigitsClassifier | None = None,
    segment: float = 0.25,
    reference_features: np.ndarray | torch.Tensor | None = None,
    layout: str | None = None,
) -> dict[str, float]:
    """Per-frame quality of the last `segment` fraction of frames against the first.

    videos: (B, C, F, H, W) in [-1, 1]; reference_features: optional (N, D) classifier features of
    real frames, e.g. `frame_features(real_videos).flatten(0, 1)`.
    Returns confidence_first / confidence_last / confidence_drift (first - last: > 0 means the
    classifier grows less sure of later frames), frechet_first_last (features of first-segment vs
    last-segment frames) and, with reference_features, fid_first / fid_last / fid_drift (last - first).
    """
    return _drift(*_frame_outputs(as_videos(videos, layout), classifier), segment, reference_features)


def _drift(
    feats: torch.Tensor,
    probs: torch.Tensor,
    segment: float,
    reference_features: np.ndarray | torch.Tensor | None,
) -> dict[str, float]:
    n = max(1, round(segment * feats.shape[1]))
    conf, feats = probs.max(dim=-1).values, feats.double()
    first, last = feats[:, :n].flatten(0, 1), feats[:, -n:].flatten(0, 1)
    out = {
        "confidence_first": conf[:, :n].mean().item(),
        "confidence_last": conf[:, -n:].mean().item(),
    }
    out["confidence_drift"] = out["confidence_first"] - out["confidence_last"]
    if len(first) >= 2:
        out["frechet_first_last"] = fid_from_features(first, last)
        if reference_features is not None:
            out["fid_first"] = fid_from_features(first, reference_features)
            out["fid_last"] = fid_from_features(last, reference_features)
            out["fid_drift"] = out["fid_last"] - out["fid_first"]
    return out


def evaluate_video(
    videos: Videos,
    classifier: DigitsClassifier | None = None,
    fps: float = 8.0,
    reference_features: np.ndarray | torch.Tensor | None = None,
    raft_weights: str | os.PathLike | None = None,
    layout: str | None = None,
) -> dict[str, float]:
    """All video metrics, averaged over the batch. videos: (B, C, F >= 2, H, W) in [-1, 1] (or
    another ``layout``).

    Keys: temporal_flickering, subject_consistency, dynamic_degree, flow_magnitude (mean top-5%
    flow, px/frame) and the `temporal_drift` keys.
    """
    videos = as_videos(videos, layout)
    mags = flow_magnitude(videos, raft_weights, layout="latent")
    feats, probs = _frame_outputs(videos, classifier)
    return {
        "temporal_flickering": temporal_flickering(videos, layout="latent").mean().item(),
        "subject_consistency": subject_consistency(videos, features=feats).mean().item(),
        "dynamic_degree": dynamic_degree(videos, fps, magnitudes=mags, layout="latent").mean().item(),
        "flow_magnitude": mags.mean().item(),
        **_drift(feats, probs, 0.25, reference_features),
    }


def moving_digits_report(videos: Videos, labels: torch.Tensor, edge: int = 12, real_speed: float | None = None,
                         frozen_below: float = 0.5, layout: str | None = None) -> dict[str, Any]:
    """The one report of moving-digits videos (B, C, F, H, W) with their labels (B,): every script and
    study of the video testbed reads these keys.

    ``frame_accuracy`` (digit crops) and ``frame_accuracy_full`` (whole frames), ``per_class_accuracy``;
    with F ≥ 2·``edge`` frames ``accuracy_first`` / ``accuracy_last`` (the first and last ``edge`` frames)
    and ``drift`` (their difference); ``centroid_speed`` (px/frame, mean over videos) and, given the real
    clips' ``real_speed``, ``motion_ratio`` and ``frozen_fraction`` (videos slower than ``frozen_below`` ×
    real); and the :func:`evaluate_video` keys (flickering, consistency, dynamic degree, confidence drift).
    """
    videos = as_videos(videos, layout)
    labels = labels.cpu()
    out: dict[str, Any] = {
        "frame_accuracy": frame_accuracy(videos, labels, layout="latent"),
        "frame_accuracy_full": frame_accuracy(videos, labels, crop=False, layout="latent"),
        "per_class_accuracy": {int(c): frame_accuracy(videos[labels == c], labels[labels == c], layout="latent")
                               for c in labels.unique()},
    }
    if videos.shape[2] >= 2 * edge:  # drift needs disjoint first and last segments
        out["accuracy_first"] = frame_accuracy(videos[:, :, :edge], labels, layout="latent")
        out["accuracy_last"] = frame_accuracy(videos[:, :, -edge:], labels, layout="latent")
        out["drift"] = out["accuracy_first"] - out["accuracy_last"]
    speeds = [centroid_speed(v[None], layout="latent") for v in videos]
    out["centroid_speed"] = float(np.mean(speeds))
    if real_speed is not None:
        out["motion_ratio"] = out["centroid_speed"] / real_speed
        out["frozen_fraction"] = float(np.mean([s < frozen_below * real_speed for s in speeds]))
    return {**out, **evaluate_video(videos, layout="latent")}

