"""Several block-causal KV-cache forwards of ``CausalWanTransformer3DModel`` as one batched forward.

``CausalWanTransformer3DModel.forward`` takes one frame offset and one cache for its whole batch.
HiAR's wavefront order runs, in one slot, cells of different blocks (frame offsets), timesteps and
caches; ``forward_batched`` stacks them along the batch with per-sample frame indices, RoPE
positions and padded caches, and runs the model's own submodules with the same per-frame block
function as the model's cache path. It lives beside the model because it uses the model's internals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .causal_wan import CausalWanTransformer3DModel, _framewise_block, _modulate, _SelfAttentionContext
from .kv_cache import KVCache

__all__ = ["CacheForward", "forward_batched"]


@dataclass
class CacheForward:
    """One cache forward: latent frames [frame_offset, frame_offset + f) of a video against ``cache``.

    x: (B, C, f, H, W); t: (B, f) model timesteps; the first ``write_frames`` frames are stored in
    ``cache`` after the forward (a deferred write of the previous block, or the block itself).
    """

    x: Tensor
    t: Tensor
    frame_offset: int
    cache: KVCache
    write_frames: int = 0


@torch.no_grad()
def forward_batched(model: CausalWanTransformer3DModel, forwards: Sequence[CacheForward], condition: Tensor, *,
                    frames_per_block: int, window: int | None = None, attention_backend: str = "auto") -> list[Tensor]:
    """Several block-causal cache forwards (different frames, timesteps and caches) as one batch.

    ``CausalWanTransformer3DModel.forward`` takes one frame offset and one cache for the whole batch;
    this concatenates the forwards along the batch with per-sample frame indices (the kernel's (B, L)
    frames), per-sample RoPE positions and per-sample caches padded to a common length (padding keys
    get frame −1 and are never attended). Inputs shorter than the longest are padded at the end with
    tokens that see their own sample's keys but are seen by nobody. It runs the model's own
    submodules with the same per-frame block function as the model's cache path, so it equals the
    separate forwards up to float rounding, and stores each forward's ``write_frames`` in its cache.

    Returns:
        per forward, the model output for its own frames (B, C_out, f_i, H, W).
    """
    batch, _, _, height, width = forwards[0].x.shape
    p_t, p_h, p_w = model.config.patch_size
    if p_t != 1:
        raise ValueError(f"batched cell forwards need a temporal patch of 1, got patch_size={model.config.patch_size}")
    rows, cols = height // p_h, width // p_w
    tokens = rows * cols
    n, sizes = len(forwards), [fw.x.shape[2] for fw in forwards]
    f_max, device = max(sizes), forwards[0].x.device

    def pad(x: Tensor, dim: int) -> Tensor:  # repeat the last frame up to f_max frames
        extra = f_max - x.shape[dim]
        return x if extra == 0 else torch.cat([x, x.narrow(dim, x.shape[dim] - 1, 1).repeat_interleave(extra, dim)], dim)

    x = torch.cat([pad(fw.x, 2) for fw in forwards])  # (n·B, C, f_max, H, W)
    t = torch.cat([pad(fw.t, 1) for fw in forwards])  # (n·B, f_max)
    q_frames, k_current, rope_cos, rope_sin = [], [], [], []
    for fw, size in zip(forwards, sizes, strict=True):
        own = torch.arange(fw.frame_offset, fw.frame_offset + size, device=device)
        q_frames.append(pad(own, 0).repeat_interleave(tokens))
        k_current.append(torch.cat([own, own.new_full((f_max - size,), -1)]).repeat_interleave(tokens))
        cos, sin = model._rotary_emb(size, rows, cols, fw.frame_offset)
        rope_cos.append(pad(cos.unflatten(1, (size, tokens)), 1).flatten(1, 2))
        rope_sin.append(pad(sin.unflatten(1, (size, tokens)), 1).flatten(1, 2))

    # per-sample caches padded to the longest; cached copies of input frames are superseded (as in the model)
    lengths = [len(fw.cache) for fw in forwards]
    c_max = max(lengths)
    cached: list[tuple[Tensor, Tensor] | None] = [None] * len(model.blocks)
    k_cached = torch.empty(n, 0, dtype=torch.long, device=device)
    if c_max:
        frames = []
        for fw, length in zip(forwards, lengths, strict=True):
            cf = fw.cache.frames if length else torch.empty(0, dtype=torch.long, device=device)
            cf = cf.to(device)
            superseded = (cf >= fw.frame_offset) & (cf < fw.frame_offset + fw.x.shape[2])
            frames.append(torch.cat([cf.masked_fill(superseded, -1), cf.new_full((c_max - length,), -1)]))
        k_cached = torch.stack(frames)
        like = next(fw.cache for fw, length in zip(forwards, lengths, strict=True) if length)
        for layer in range(len(model.blocks)):
            cached[layer] = tuple(
                torch.cat([_pad_cache(getattr(fw.cache, store)[layer] if length else None,
                                      getattr(like, store)[layer], batch, c_max)
                           for fw, length in zip(forwards, lengths, strict=True)])
                for store in ("keys", "values")
            )

    q_frames_b = torch.stack(q_frames).repeat_interleave(batch, 0)
    k_frames_b = torch.cat([k_cached, torch.stack(k_current)], dim=1).repeat_interleave(batch, 0)
    rotary = (torch.cat(rope_cos).repeat_interleave(batch, 0), torch.cat(rope_sin).repeat_interleave(batch, 0))
    writes = [fw.write_frames for fw in forwards]
    context = _SelfAttentionContext(
        mode="block_causal", q_frames=q_frames_b, k_frames=k_frames_b, frames_per_block=frames_per_block,
        window=window, backend=attention_backend, cached=cached, write_tokens=max(writes) * tokens,
    )

    h = model.patch_embedding(x).flatten(2).transpose(1, 2).contiguous()
    temb, timestep_proj, text, _ = model.condition_embedder(t.flatten(), condition.repeat(n, 1, 1), None,
                                                            timestep_seq_len=f_max)
    timestep_proj = timestep_proj.unflatten(2, (6, -1))
    for block in model.blocks:
        h = _framewise_block(block, h, text, timestep_proj, rotary, tokens, context)

    for i, (fw, w) in enumerate(zip(forwards, writes, strict=True)):
        if w:
            rows_i = slice(i * batch, (i + 1) * batch)
            fw.cache.update(
                [context.written[layer][0][rows_i, :, : w * tokens] for layer in range(len(model.blocks))],
                [context.written[layer][1][rows_i, :, : w * tokens] for layer in range(len(model.blocks))],
                q_frames[i][: w * tokens],
            )

    table = model.scale_shift_table.unsqueeze(0).to(temb.device)
    shift, scale = (table + temb.unsqueeze(2)).unsqueeze(3).unbind(2)
    h = model.proj_out(_modulate(model.norm_out(h.float()), scale, shift, tokens).type_as(h))
    h = h.reshape(n * batch, f_max, rows, cols, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
    out = h.flatten(6, 7).flatten(4, 5).flatten(2, 3)
    return [out[i * batch : (i + 1) * batch, :, :size] for i, size in enumerate(sizes)]


def _pad_cache(tensor: Tensor | None, like: Tensor, batch: int, length: int) -> Tensor:
    """(B, H, L, D) cached keys or values zero-padded to ``length`` tokens (None: all padding)."""
    if tensor is None:
        return like.new_zeros(batch, like.shape[1], length, like.shape[3])
    return torch.nn.functional.pad(tensor, (0, 0, 0, length - tensor.shape[2]))
