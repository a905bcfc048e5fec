"""Moving digits: seeded procedural videos of 1-2 digits bouncing around a small canvas.

Each video is drawn from its own generator seeded by `(seed, index)`, so sample `i` is the same
whatever order (or worker) asks for it. A digit is a glyph from `fdistill.data.digits` (the
native 8x8 glyph when `glyph_size == 8`, otherwise a bilinear resize of it) that starts at a
uniform position, moves with a constant velocity (uniform direction, speed in `speed_range`
pixels per frame) and reflects off the canvas walls. Overlapping digits combine with a max, as in
Moving MNIST. Frames are drawn at integer positions (the rounded float trajectory), so a digit
never leaves the canvas and a static digit is exactly static.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from fdistill.data.digits import Split, load_digits_8x8, upsample_digits


@dataclass(frozen=True)
class MovingDigitsSample:
    """One video with its ground truth.

    video: (1, F, H, W) float32 in [-1, 1]; labels: (D,) int64 classes of the D digits (the
    first is the conditioning label); positions: (F, D, 2) float32 top-left (row, col) of each
    glyph before rounding; velocities: (F, D, 2) float32 velocity used to leave each frame.
    """

    video: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor
    velocities: torch.Tensor


def bounce_trajectory(
    start: np.ndarray, velocity: np.ndarray, num_frames: int, limit: float
) -> tuple[np.ndarray, np.ndarray]:
    """Constant-velocity motion in the box [0, limit]^2 with mirror reflections at the walls.

    Args:
        start: (2,) initial position; velocity: (2,) pixels per frame, each |v| <= limit.
    Returns:
        positions: (F, 2); velocities: (F, 2), the velocity after each frame's reflections.
    """
    positions = np.empty((num_frames, 2), dtype=np.float64)
    velocities = np.empty((num_frames, 2), dtype=np.float64)
    p, v = start.astype(np.float64).copy(), velocity.astype(np.float64).copy()
    for f in range(num_frames):
        positions[f], velocities[f] = p, v
        p = p + v
        low, high = p < 0, p > limit
        p = np.where(low, -p, np.where(high, 2 * limit - p, p))
        v = np.where(low | high, -v, v)
    return positions, velocities


class MovingDigits(Dataset):
    """Dataset of `(video, label)`: video (1, F, H, W) in [-1, 1], label = first digit's class.

    Args:
        num_videos: length of the dataset (videos are generated on demand).
        num_frames: F.
        size: canvas height = width H = W.
        max_digits / min_digits: number of digits per video, uniform in [min, max].
        seed: base seed; video i uses `np.random.default_rng((seed, i))`.
        glyph_size: side of a digit on the canvas (default `size // 2`; 8 uses native glyphs).
        speed_range: (low, high) speed in pixels per frame.
        split: which digits split supplies the glyphs ("train", "test" or "all").
    """

    def __init__(
        self,
        num_videos: int = 1024,
        num_frames: int = 12,
        size: int = 16,
        max_digits: int = 2,
        seed: int = 0,
        *,
        min_digits: int = 1,
        glyph_size: int | None = None,
        speed_range: tuple[float, float] = (0.5, 1.5),
        split: Split = "train",
    ) -> None:
        glyph_size = size // 2 if glyph_size is None else glyph_size
        if not 1 <= min_digits <= max_digits:
            raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
        if not 0 < glyph_size < size:
            raise ValueError(f"glyph_size must be in (0, size={size}), got {glyph_size}")
        if not 0 <= speed_range[0] <= speed_range[1] <= size - glyph_size:
            raise ValueError(f"speed_range {speed_range} must lie in [0, size - glyph_size]")
        if num_videos < 1 or num_frames < 1:
            raise ValueError("num_videos and num_frames must be positive")
        self.num_videos, self.num_frames, self.size = num_videos, num_frames, size
        self.min_digits, self.max_digits, self.seed = min_digits, max_digits, seed
        self.glyph_size, self.speed_range = glyph_size, speed_range
        glyphs, self.glyph_labels = load_digits_8x8(split)
        if glyph_size != glyphs.shape[-1]:
            glyphs = upsample_digits(glyphs, glyph_size)[:, 0]
        self.glyphs = glyphs.clamp(0, 1).numpy()

    def __len__(self) -> int:
        return self.num_videos

    def sample(self, index: int) -> MovingDigitsSample:
        """Video `index` with labels and trajectories (deterministic in `(seed, index)`)."""
        if not 0 <= index < self.num_videos:
            raise IndexError(f"index {index} out of range for {self.num_videos} videos")
        rng = np.random.default_rng((self.seed, index))
        num_digits = int(rng.integers(self.min_digits, self.max_digits + 1))
        limit = float(self.size - self.glyph_size)
        g = self.glyph_size
        canvas = np.zeros((self.num_frames, self.size, self.size), dtype=np.float32)
        labels, positions, velocities = [], [], []
        for _ in range(num_digits):
            glyph_index = int(rng.integers(len(self.glyphs)))
            start = rng.uniform(0.0, limit, size=2)
            angle = rng.uniform(0.0, 2 * np.pi)
            speed = rng.uniform(*self.speed_range)
            velocity = speed * np.array([np.sin(angle), np.cos(angle)])
            pos, vel = bounce_trajectory(start, velocity, self.num_frames, limit)
            corners = np.clip(np.rint(pos), 0, limit).astype(np.int64)
            glyph = self.glyphs[glyph_index]
            for f, (r, c) in enumerate(corners):
                np.maximum(canvas[f, r : r + g, c : c + g], glyph, out=canvas[f, r : r + g, c : c + g])
            labels.append(int(self.glyph_labels[glyph_index]))
            positions.append(pos)
            velocities.append(vel)
        return MovingDigitsSample(
            video=torch.from_numpy(canvas * 2.0 - 1.0)[None],
            labels=torch.tensor(labels, dtype=torch.int64),
            positions=torch.from_numpy(np.stack(positions, axis=1).astype(np.float32)),
            velocities=torch.from_numpy(np.stack(velocities, axis=1).astype(np.float32)),
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.sample(index)
        return s.video, s.labels[0]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All videos stacked: videos (N, 1, F, H, W) in [-1, 1], labels (N,) int64."""
        items = [self[i] for i in range(self.num_videos)]
        return torch.stack([v for v, _ in items]), torch.stack([y for _, y in items])
