"""Per-layer self-attention keys/values of earlier frames, bounded by a rolling window."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class KVCache:
    """Keys and values of already generated frames, one entry per self-attention layer.

    All layers hold the same tokens, so one ``frames`` tensor describes them all. ``update`` never
    writes in place (it builds new tensors): a forward that read the cache keeps seeing the same
    tensors even if the cache is updated later, which keeps gradient-checkpoint recomputation exact.

    Args:
        num_layers: number of self-attention layers (transformer blocks).
        window: keep only the last ``window`` frames (by frame index) after each update, so memory
            does not grow with video length; None keeps everything. For results identical to full
            attention, use a window >= the attention window.

    Attributes:
        keys, values: per layer, (B, H, Lc, D) post-norm, post-RoPE keys / values, or None if empty.
        frames: (Lc,) absolute frame index of each cached token, or None if empty.
    """

    def __init__(self, num_layers: int, window: int | None = None) -> None:
        if window is not None and window < 1:
            raise ValueError(f"window must be a positive number of frames or None, got {window}")
        self.num_layers = num_layers
        self.window = window
        self.reset()

    def reset(self) -> None:
        self.keys: list[torch.Tensor | None] = [None] * self.num_layers
        self.values: list[torch.Tensor | None] = [None] * self.num_layers
        self.frames: torch.Tensor | None = None

    def __len__(self) -> int:
        """Number of cached tokens."""
        return 0 if self.frames is None else self.frames.numel()

    @property
    def num_frames(self) -> int:
        return 0 if self.frames is None else int(torch.unique(self.frames).numel())

    def nbytes(self) -> int:
        tensors = [t for t in (*self.keys, *self.values) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def update(self, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], frames: torch.Tensor) -> None:
        """Store new tokens for every layer; they replace cached tokens of the same frames.

        Args:
            keys, values: one (B, H, Ln, D) tensor per layer.
            frames: (Ln,) absolute frame index of each new token.
        """
        if len(keys) != self.num_layers or len(values) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} layers, got {len(keys)} keys / {len(values)} values")
        frames = frames.to(keys[0].device)
        all_frames = frames if self.frames is None else torch.cat([self.frames, frames])
        # Tokens to keep out of [cached; new]: cached tokens of rewritten frames go, and so does
        # everything older than the window.
        select = torch.ones_like(all_frames, dtype=torch.bool)
        if self.frames is not None:
            select[: self.frames.numel()] = ~torch.isin(self.frames, frames)
        if self.window is not None:
            select &= all_frames >= all_frames.max() + 1 - self.window
        select = None if bool(select.all()) else select
        for layer in range(self.num_layers):
            for store, new in ((self.keys, keys[layer]), (self.values, values[layer])):
                # torch.cat always copies: the cache never aliases caller storage nor writes in place.
                merged = torch.cat([new] if store[layer] is None else [store[layer], new], dim=2)
                store[layer] = merged if select is None else merged[:, :, select]
        self.frames = all_frames if select is None else all_frames[select]
