"""Per-layer self-attention keys/values of earlier frames, bounded by a rolling window."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
        sink: an attention sink: frames 0 .. sink − 1 of the video stay in the cache for good, counted in the
            ``window`` (which then keeps ``sink`` first and ``window − sink`` last frames). Once the window has
            moved past them they are shown just before the oldest kept frame: their ``frames`` labels become
            r − sink .. r − 1 (r: the oldest kept frame) and their keys are re-rotated by the same shift with
            ``rotate``, so every key-query distance stays inside the window (RoPE is relative: rotating a
            key written at position p by R(d) is the key written at p + d).
        rotate: ``rotate(keys, d)`` → keys (B, H, L, D) re-rotated by d frames; needed for ``sink``.

    Attributes:
        keys, values: per layer, (B, H, Lc, D) post-norm, post-RoPE keys / values, or None if empty.
        frames: (Lc,) frame index of each cached token as attention sees it (its RoPE position and its place
            in the mask): the absolute index, except for sink frames shown before the window.
        origins: (Lc,) absolute frame index of each cached token.
    """

    def __init__(self, num_layers: int, window: int | None = None, sink: int = 0,
                 rotate: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> None:
        if window is not None and window < 1:
            raise ValueError(f"window must be a positive number of frames or None, got {window}")
        if sink < 0 or (sink and (window is None or sink >= window)):
            raise ValueError(f"sink must be 0 or a number of frames below the window ({window}), got {sink}")
        if sink and rotate is None:
            raise ValueError("an attention sink needs rotate(keys, d) to move its keys before the window")
        self.num_layers = num_layers
        self.window = window
        self.sink = sink
        self.rotate = rotate
        self.reset()

    def reset(self) -> None:
        self.keys: list[torch.Tensor | None] = [None] * self.num_layers
        self.values: list[torch.Tensor | None] = [None] * self.num_layers
        self.frames: torch.Tensor | None = None
        self.origins: torch.Tensor | None = None

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
        origins = frames if self.origins is None else torch.cat([self.origins, frames])
        labels = frames if self.frames is None else torch.cat([self.frames, frames])
        # Tokens to keep out of [cached; new]: cached tokens of rewritten frames go, and so does
        # everything older than the window (but the sink).
        select = torch.ones_like(origins, dtype=torch.bool)
        if self.origins is not None:
            select[: self.origins.numel()] = ~torch.isin(self.origins, frames)
        if self.window is not None:
            recent = origins >= origins.max() + 1 - (self.window - self.sink)
            select &= recent | (origins < self.sink)
        shift = 0
        if self.sink:
            sink = select & (origins < self.sink)
            kept = origins[select & ~sink]
            if bool(sink.any()) and kept.numel():
                # Sink frame o is shown at r − sink + o (r: oldest kept frame), or at o while the window reaches it.
                target = torch.clamp(kept.min() - self.sink + origins[sink], min=origins[sink])
                shifts = torch.unique(target - labels[sink])
                if shifts.numel() != 1:
                    raise RuntimeError(f"sink frames would move by different shifts {shifts.tolist()}")
                shift = int(shifts[0])  # one shift for every sink token: they move together
                labels = labels.clone()
                labels[sink] = target
        select = None if bool(select.all()) else select
        kept_origins = origins if select is None else origins[select]
        in_sink = kept_origins < self.sink
        for layer in range(self.num_layers):
            for store, new in ((self.keys, keys[layer]), (self.values, values[layer])):
                # torch.cat always copies: the cache never aliases caller storage nor writes in place.
                merged = torch.cat([new] if store[layer] is None else [store[layer], new], dim=2)
                store[layer] = merged if select is None else merged[:, :, select]
            if shift:
                moved = self.keys[layer].clone()
                moved[:, :, in_sink] = self.rotate(moved[:, :, in_sink], shift)
                self.keys[layer] = moved
        self.frames = labels if select is None else labels[select]
        self.origins = kept_origins
