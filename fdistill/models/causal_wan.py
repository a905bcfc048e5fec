"""Wan2.1's transformer with frame offsets, per-frame timesteps and a block-causal KV cache.

``CausalWanTransformer3DModel`` subclasses diffusers' ``WanTransformer3DModel`` with the same config,
so ``from_pretrained`` loads real Wan2.1 checkpoints. It adds, per forward call:

- ``frame_offset``: the input's first latent frame is frame ``frame_offset`` of the video; RoPE and
  the attention mask use absolute frame indices, without an upper bound (the temporal RoPE angles are
  computed per call, not read from diffusers' ``rope_max_seq_len`` table; see :func:`_frame_rope`).
- per-frame timesteps: ``timestep`` may be (B,) or (B, F); the time embedding is computed per frame
  and broadcast over that frame's tokens (modulation of every block and of the output norm).
- ``attention="block_causal"``: frame f sees frames of blocks <= f // frames_per_block, optionally
  within a rolling ``window`` of frames; ``"bidirectional"`` (default) is the teacher's full attention.
- ``kv_cache``: self-attention also attends to the cached keys/values of earlier frames
  (the same rule applies to them); with ``update_cache=True`` the keys/values of this input
  (or of its first ``cache_write_frames`` frames) are stored after the forward. The cache is
  read as it was before the call, so a write forward may use a different timestep from the reads
  that follow (HiAR writes the cache from the re-noised block), and one forward can denoise block
  b + 1 while writing block b (per-frame timesteps, ``cache_write_frames`` = frames of block b).

``forward_batched`` runs several such forwards as one batch: each :class:`CacheForward` has its own
frames, frame offset, timesteps and cache (HiAR's wavefront runs cells of different blocks, steps
and cache levels in one slot). ``forward`` is the one-group case of the same body, so every HiAR
order runs through the same code.

Frames are post-patch temporal positions (latent frames for Wan2.1, whose temporal patch is 1).
With the defaults (bidirectional, no cache, offset 0, timestep (B,)) the call goes to the parent's
forward unchanged. Otherwise the model runs its own short loop over the parent's submodules;
diffusers hooks registered on whole transformer blocks (block-level offloading, context
parallelism, first-block cache) do not apply on that path.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

# diffusers' pipeline loader finds a component's loadable base class by name in its module
from diffusers import ModelMixin, WanTransformer3DModel  # noqa: F401
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.utils import apply_lora_scale
from einops import rearrange
from torch import Tensor

from fdistill.kernels import block_causal_attention

from .kv_cache import KVCache

AttentionMode = Literal["bidirectional", "block_causal"]

__all__ = ["AttentionMode", "CacheForward", "CausalWanSelfAttnProcessor", "CausalWanTransformer3DModel"]


@dataclass
class CacheForward:
    """One group of a batched forward: frames [frame_offset, frame_offset + f) of a video against ``cache``.

    x: (B, C, f, H, W) latents; t: (B,) or (B, f) model timesteps; cache: keys/values of earlier frames
    (None: no cache); the first ``write_frames`` frames are stored in ``cache`` after the forward
    (a deferred write of the previous block, or the block itself).
    """

    x: Tensor
    t: Tensor
    frame_offset: int = 0
    cache: KVCache | None = None
    write_frames: int = 0


@dataclass
class _SelfAttentionContext:
    """What every self-attention layer needs to know about one forward call."""

    mode: AttentionMode
    q_frames: Tensor  # (L,) or (N, L) frame index of each current token
    k_frames: Tensor  # (Lc + L,) or (N, Lc + L): cached tokens first, then the current ones; < 0: padding
    frames_per_block: int | None
    window: int | None
    backend: str
    cached: list[tuple[Tensor, Tensor] | None]  # per layer, (N, H, Lc, D) each
    write_tokens: int  # the first write_tokens current tokens go to the cache (0: none)
    key_mask: Tensor | None = None  # bidirectional with padding keys: (1 or N, 1, 1, Lc + L) bool
    written: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)


# WanRotaryPosEmbed's default; WanTransformer3DModel builds its RoPE without passing a theta.
_ROPE_THETA = 10000.0


def _frame_rope(frame_offset: int, frames: int, dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Wan's temporal RoPE of frames frame_offset .. frame_offset + frames − 1: (frames, dim) cos and sin, float32.

    diffusers' ``WanRotaryPosEmbed`` precomputes cos and sin of angle = position × θ^(−2i/dim) for
    positions < ``rope_max_seq_len`` only (64 for the moving-digits teacher). The frequencies are
    fixed, so this computes the same angles for any position with diffusers' own
    ``get_1d_rotary_pos_embed``, in float64 as the table is: bit-identical inside the table, the same
    function beyond it.

    Absolute positions rather than positions re-based inside the window, because:

    - RoPE attention is relative. With rotated q and k, q·k depends on the two positions only through
      their difference (R(a)ᵀR(b) = R(b − a)). Block-causal attention with a window of W frames and
      blocks of F lets a query see keys W − 1 frames back to F − 1 ahead, so a query at frame 900
      meets the same differences as one at frame 8: exactly the scores a re-based window would give.
      The bidirectional teacher was trained on 12-frame clips (positions 0..11, differences −11..11);
      any window W <= 12 keeps every difference inside that range at any video length, so frame 900
      is in distribution as far as positions go (the causal mask and the few steps are the shift
      from training, and they are the same at every length). Without a window the differences grow
      past training whichever way positions are counted.
    - The KV cache stores keys after RoPE (``KVCache.keys``), rotated at the position they were
      written at. With absolute positions a cached key stays valid until it leaves the window;
      re-basing would have to re-rotate every cached key whenever the window moves.
    - Precision: the angle is formed in float64 (error ~ position × 1e-16 rad) and only cos and sin
      are rounded to float32 (error <= 3e-8), so rotated q and k at frame 10⁶ are as exact as at
      frame 0. A float32 angle's rounding grows with it (up to ~ position × 6e-8 rad): the cos
      error is 3e-6 at frame 1000 and 8e-4 at 10⁵ (reports/video_length.json, "rope").
    """
    compute = torch.device("cpu") if device.type == "mps" else device  # MPS has no float64
    positions = torch.arange(frame_offset, frame_offset + frames, dtype=torch.float64, device=compute)
    cos, sin = get_1d_rotary_pos_embed(dim, positions, _ROPE_THETA, use_real=True, repeat_interleave_real=True,
                                       freqs_dtype=torch.float64)
    return cos.to(device), sin.to(device)


def _apply_rotary_emb(x: Tensor, freqs_cos: Tensor, freqs_sin: Tensor) -> Tensor:
    """Wan's interleaved RoPE on x: (B, L, H, D); freqs: (1, L, 1, D)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).type_as(x)


class CausalWanSelfAttnProcessor:
    """Self-attention of one Wan block over the KV cache and the current tokens.

    Without a context (the parent's forward) it computes exactly what ``WanAttnProcessor`` does for
    self-attention. ``_attention_backend`` follows diffusers' ``set_attention_backend`` for the
    bidirectional case; block-causal attention goes through ``fdistill.kernels``.
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, layer_idx: int) -> None:
        self.layer_idx = layer_idx

    def __call__(
        self,
        attn,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        rotary_emb: tuple[Tensor, Tensor] | None = None,
        context: _SelfAttentionContext | None = None,
    ) -> Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("CausalWanSelfAttnProcessor handles self-attention without a mask only")
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))  # (B, L, H, D)
        if rotary_emb is not None:
            query, key = _apply_rotary_emb(query, *rotary_emb), _apply_rotary_emb(key, *rotary_emb)

        if context is None:
            out = dispatch_attention_fn(
                query, key, value, backend=self._attention_backend, parallel_config=self._parallel_config
            )
        else:
            out = self._attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), context)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))

    def _attend(self, q, k, v, context: _SelfAttentionContext) -> Tensor:
        """q, k, v: (B, H, L, D) current tokens -> (B, L, H, D)."""
        if context.write_tokens:
            # Assignment (not append) keeps gradient-checkpoint recomputation idempotent.
            n = context.write_tokens
            context.written[self.layer_idx] = (k[:, :, :n], v[:, :, :n])
        cached = context.cached[self.layer_idx]
        if cached is not None:
            k, v = torch.cat([cached[0], k], dim=2), torch.cat([cached[1], v], dim=2)
        if context.mode == "bidirectional":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=context.key_mask)
        else:
            out = block_causal_attention(
                q,
                k,
                v,
                q_frames=context.q_frames,
                k_frames=context.k_frames,
                frames_per_block=context.frames_per_block,
                window=context.window,
                backend=context.backend,
            )
        return out.transpose(1, 2)


def _modulate(x: Tensor, scale: Tensor, shift: Tensor, tokens_per_frame: int) -> Tensor:
    """x: (B, F*T, C); scale, shift: (B, F, 1, C) per frame -> x * (1 + scale) + shift, frame by frame."""
    return (x.unflatten(1, (-1, tokens_per_frame)) * (1 + scale) + shift).flatten(1, 2)


def _gated(x: Tensor, gate: Tensor, tokens_per_frame: int) -> Tensor:
    """x: (B, F*T, C); gate: (B, F, 1, C) per frame -> x * gate, frame by frame."""
    return (x.unflatten(1, (-1, tokens_per_frame)) * gate).flatten(1, 2)


def _framewise_block(
    block,
    hidden_states: Tensor,
    encoder_hidden_states: Tensor,
    timestep_proj: Tensor,
    rotary_emb: tuple[Tensor, Tensor],
    tokens_per_frame: int,
    context: _SelfAttentionContext,
) -> Tensor:
    """``WanTransformerBlock.forward`` with per-frame modulation and the attention context.

    hidden_states: (B, F*T, C); timestep_proj: (B, F, 6, C) (F may be 1 to broadcast over frames).
    """
    x = hidden_states
    mod = (block.scale_shift_table.unsqueeze(0) + timestep_proj.float()).unsqueeze(3)  # (B, F, 6, 1, C)
    shift, scale, gate, c_shift, c_scale, c_gate = mod.unbind(2)

    norm_x = _modulate(block.norm1(x.float()), scale, shift, tokens_per_frame).type_as(x)
    attn_out = block.attn1(norm_x, None, None, rotary_emb, context=context)
    x = (x.float() + _gated(attn_out, gate, tokens_per_frame)).type_as(x)

    norm_x = block.norm2(x.float()).type_as(x)
    x = x + block.attn2(norm_x, encoder_hidden_states, None, None)

    norm_x = _modulate(block.norm3(x.float()), c_scale, c_shift, tokens_per_frame).type_as(x)
    ff_out = block.ffn(norm_x)
    return (x.float() + _gated(ff_out.float(), c_gate, tokens_per_frame)).type_as(x)




def _pad_frames(x: Tensor, dim: int, frames: int) -> Tensor:
    """x repeated along ``dim`` from its last entry up to ``frames`` entries (inputs of a batch share a length)."""
    extra = frames - x.shape[dim]
    return x if extra == 0 else torch.cat([x, x.narrow(dim, x.shape[dim] - 1, 1).repeat_interleave(extra, dim)], dim)


def _pad_cache(tensor: Tensor | None, like: Tensor, batch: int, length: int) -> Tensor:
    """(B, H, L, D) cached keys or values zero-padded to ``length`` tokens (None: all padding)."""
    if tensor is None:
        return like.new_zeros(batch, like.shape[1], length, like.shape[3])
    return F.pad(tensor, (0, 0, 0, length - tensor.shape[2]))


class CausalWanTransformer3DModel(WanTransformer3DModel):
    """Wan transformer for block-causal autoregressive video generation (see the module docstring).

    Same constructor and config as ``WanTransformer3DModel``; every block's self-attention uses
    ``CausalWanSelfAttnProcessor``.
    """

    @functools.wraps(WanTransformer3DModel.__init__)
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for idx, block in enumerate(self.blocks):
            block.attn1.set_processor(CausalWanSelfAttnProcessor(idx))

    def make_kv_cache(self, window: int | None = None, sink: int = 0) -> KVCache:
        """An empty cache for this model, keeping at most ``window`` frames (None: all), the first ``sink``
        of them for good (an attention sink, shown just before the window; see :class:`KVCache`)."""
        return KVCache(len(self.blocks), window=window, sink=sink, rotate=self.rotate_keys)

    def rotate_keys(self, keys: Tensor, frames: int) -> Tensor:
        """Cached keys (B, H, L, D), rotated at their frame p, as if written at frame p + ``frames``.

        Only the temporal slice of Wan's RoPE (the first ``t_dim`` channels of a head) depends on the
        frame; rotations compose, so R(frames) applied to R(p)·k is R(p + frames)·k.
        """
        t_dim = self.rope.t_dim
        cos, sin = _frame_rope(frames, 1, t_dim, keys.device)
        rotated = _apply_rotary_emb(keys[..., :t_dim].transpose(1, 2), cos.view(1, 1, 1, -1),
                                    sin.view(1, 1, 1, -1)).transpose(1, 2)
        return torch.cat([rotated, keys[..., t_dim:]], dim=-1)

    def forward(
        self,
        hidden_states: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor,
        encoder_hidden_states_image: Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        *,
        frame_offset: int = 0,
        attention: AttentionMode = "bidirectional",
        frames_per_block: int | None = None,
        window: int | None = None,
        kv_cache: KVCache | None = None,
        update_cache: bool = False,
        cache_write_frames: int | None = None,
        attention_backend: str = "auto",
    ) -> Transformer2DModelOutput | tuple[Tensor]:
        """Predict the flow/noise of ``hidden_states``, optionally block-causally with a KV cache.

        Args:
            hidden_states: (B, C, F, H, W) latents of frames frame_offset .. frame_offset + F - 1.
            timestep: (B,) or (B, F) per-frame timesteps.
            encoder_hidden_states: (B, S, text_dim) text embeddings.
            encoder_hidden_states_image, return_dict, attention_kwargs: as in the parent.
            frame_offset: absolute index of the first input frame (RoPE and mask positions).
            attention: "bidirectional" (all cached and current tokens) or "block_causal".
            frames_per_block: frames per causal block; required for "block_causal".
            window: rolling attention window in frames ("block_causal" only); >= frames_per_block.
            kv_cache: keys/values of earlier frames to attend to; cached frames that the input
                also contains are ignored (the input supersedes them).
            update_cache: store this input's self-attention keys/values in ``kv_cache`` after the
                forward (they replace cached tokens of the same frames; the cache's own window evicts
                old frames).
            cache_write_frames: with ``update_cache``, store only the first this-many input frames.
            attention_backend: ``fdistill.kernels`` backend for block-causal attention.

        Returns:
            ``Transformer2DModelOutput(sample=(B, C_out, F, H, W))`` or a 1-tuple.
        """
        if attention not in ("bidirectional", "block_causal"):
            raise ValueError(f"attention must be 'bidirectional' or 'block_causal', got {attention!r}")
        if attention == "block_causal" and frames_per_block is None:
            raise ValueError("attention='block_causal' needs frames_per_block")
        if attention == "bidirectional" and window is not None:
            raise ValueError("window applies to attention='block_causal' only")
        if update_cache and kv_cache is None:
            raise ValueError("update_cache=True needs a kv_cache")
        if attention == "bidirectional" and kv_cache is None and frame_offset == 0 and timestep.ndim == 1:
            return super().forward(
                hidden_states,
                timestep,
                encoder_hidden_states,
                encoder_hidden_states_image,
                return_dict=return_dict,
                attention_kwargs=attention_kwargs,
            )
        frames = hidden_states.shape[2] // self.config.patch_size[0]
        write_frames = (frames if cache_write_frames is None else cache_write_frames) if update_cache else 0
        (output,) = self._forward_groups(
            [CacheForward(hidden_states, timestep, frame_offset, kv_cache, write_frames)],
            encoder_hidden_states,
            encoder_hidden_states_image,
            attention_kwargs=attention_kwargs,
            attention=attention,
            frames_per_block=frames_per_block,
            window=window,
            attention_backend=attention_backend,
        )
        return Transformer2DModelOutput(sample=output) if return_dict else (output,)

    def forward_batched(
        self,
        forwards: Sequence[CacheForward],
        encoder_hidden_states: Tensor,
        *,
        frames_per_block: int,
        window: int | None = None,
        attention_backend: str = "auto",
    ) -> list[Tensor]:
        """Several block-causal cache forwards (different frames, timesteps and caches) as one batch.

        The forwards are concatenated along the batch with per-sample frame indices (the kernel's
        (B, L) frames), per-sample RoPE positions and per-sample caches padded to a common length
        (padding keys get frame −1 and are never attended). Inputs shorter than the longest are
        padded at the end with tokens that see their own sample's keys but are seen by nobody. The
        result equals the separate ``forward`` calls up to float rounding, and each forward's
        ``write_frames`` are stored in its cache.

        Args:
            forwards: the groups, each (B, C, f_i, H, W) with the same B, H, W.
            encoder_hidden_states: (B, S, text_dim), the condition of every group.

        Returns:
            per forward, the model output for its own frames (B, C_out, f_i, H, W).
        """
        return self._forward_groups(
            forwards,
            encoder_hidden_states.repeat(len(forwards), 1, 1),
            None,
            attention_kwargs=None,
            attention="block_causal",
            frames_per_block=frames_per_block,
            window=window,
            attention_backend=attention_backend,
        )

    @apply_lora_scale("attention_kwargs")
    def _forward_groups(
        self,
        forwards: Sequence[CacheForward],
        encoder_hidden_states: Tensor,
        encoder_hidden_states_image: Tensor | None,
        *,
        attention_kwargs: dict[str, Any] | None,
        attention: AttentionMode,
        frames_per_block: int | None,
        window: int | None,
        attention_backend: str,
    ) -> list[Tensor]:
        """The forward body: ``forwards`` stacked along the batch (G groups of B samples, N = G·B).

        encoder_hidden_states: (N, S, text_dim). Returns per group (B, C_out, f_i, H, W).
        """
        batch, _, _, height, width = forwards[0].x.shape
        p_t, p_h, p_w = self.config.patch_size
        rows, cols = height // p_h, width // p_w
        tokens = rows * cols
        sizes = [fw.x.shape[2] // p_t for fw in forwards]
        f_max = max(sizes)
        for fw, size in zip(forwards, sizes, strict=True):
            if fw.x.shape[0] != batch or fw.x.shape[3:] != (height, width):
                raise ValueError(f"batched forwards need one (B, H, W); got {tuple(fw.x.shape)} and "
                                 f"{tuple(forwards[0].x.shape)}")
            if fw.t.shape not in ((batch,), (batch, size)):
                raise ValueError(f"timestep must be (B,) or (B, F) = ({batch}, {size}); got {tuple(fw.t.shape)}")
            if not 0 <= fw.write_frames <= size:
                raise ValueError(f"cache_write_frames={fw.write_frames} outside [0, {size}]")
        if len(forwards) > 1 and p_t != 1:
            raise ValueError(f"batched forwards need a temporal patch of 1, got patch_size={self.config.patch_size}")

        if len(forwards) == 1:  # (B,) timesteps stay one per sample, broadcast over the frames
            x, t = forwards[0].x, forwards[0].t if forwards[0].t.ndim == 2 else forwards[0].t[:, None]
        else:
            x = torch.cat([_pad_frames(fw.x, 2, f_max) for fw in forwards])
            t = torch.cat([_pad_frames(fw.t if fw.t.ndim == 2 else fw.t[:, None].expand(-1, size), 1, f_max)
                           for fw, size in zip(forwards, sizes, strict=True)])
        context, rotary_emb = self._attention_context(forwards, sizes, rows, cols, attention, frames_per_block,
                                                      window, attention_backend, x.device)

        hidden = rearrange(self.patch_embedding(x), "n c f h w -> n (f h w) c").contiguous()
        temb, timestep_proj, text, text_image = self.condition_embedder(
            t.flatten(), encoder_hidden_states, encoder_hidden_states_image, timestep_seq_len=t.shape[1]
        )
        timestep_proj = timestep_proj.unflatten(2, (6, -1))  # (N, F or 1, 6, C)
        if text_image is not None:
            text = torch.cat([text_image, text], dim=1)
        for block in self.blocks:
            args = (block, hidden, text, timestep_proj, rotary_emb, tokens, context)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden = self._gradient_checkpointing_func(_framewise_block, *args)
            else:
                hidden = _framewise_block(*args)

        for i, fw in enumerate(forwards):
            if fw.write_frames:
                group, n = slice(i * batch, (i + 1) * batch), fw.write_frames * tokens
                written = [context.written[layer] for layer in range(len(self.blocks))]
                own_frames = torch.arange(fw.frame_offset, fw.frame_offset + fw.write_frames, device=x.device)
                fw.cache.update([k[group, :, :n] for k, _ in written], [v[group, :, :n] for _, v in written],
                                own_frames.repeat_interleave(tokens))

        table = self.scale_shift_table.unsqueeze(0).to(temb.device)  # (1, 1, 2, C)
        shift, scale = (table + temb.unsqueeze(2)).unsqueeze(3).unbind(2)  # (N, F or 1, 1, C) each
        norm = _modulate(self.norm_out(hidden.float()), scale.to(hidden.device), shift.to(hidden.device), tokens)
        out = rearrange(self.proj_out(norm.type_as(hidden)), "n (f h w) (pf ph pw c) -> n c (f pf) (h ph) (w pw)",
                        f=f_max, h=rows, w=cols, pf=p_t, ph=p_h, pw=p_w)
        return [out[i * batch : (i + 1) * batch, :, : size * p_t] for i, size in enumerate(sizes)]

    def _rotary_emb(self, frames: int, rows: int, cols: int, frame_offset: int) -> tuple[Tensor, Tensor]:
        """Wan's 3-D RoPE tables for frames frame_offset.., as (1, F*rows*cols, 1, head_dim) cos and sin.

        The temporal part is computed for any frame index (:func:`_frame_rope`); the spatial (h, w)
        parts are diffusers' table, as in the parent.
        """
        if frame_offset < 0:
            raise ValueError(f"frame_offset must be >= 0 (negative frame indices mark padding keys), got {frame_offset}")
        rope = self.rope
        temporal = _frame_rope(frame_offset, frames, rope.t_dim, rope.freqs_cos.device)
        tables = []
        for f_t, freqs in zip(temporal, (rope.freqs_cos, rope.freqs_sin), strict=True):
            _, f_h, f_w = freqs.split([rope.t_dim, rope.h_dim, rope.w_dim], dim=1)
            grid = (frames, rows, cols)
            tables.append(
                torch.cat(
                    [
                        f_t.to(freqs.dtype).view(frames, 1, 1, -1).expand(*grid, -1),
                        f_h[:rows].view(1, rows, 1, -1).expand(*grid, -1),
                        f_w[:cols].view(1, 1, cols, -1).expand(*grid, -1),
                    ],
                    dim=-1,
                ).reshape(1, frames * rows * cols, 1, -1)
            )
        return tables[0], tables[1]

    def _attention_context(
        self,
        forwards: Sequence[CacheForward],
        sizes: Sequence[int],
        rows: int,
        cols: int,
        mode: AttentionMode,
        frames_per_block: int | None,
        window: int | None,
        backend: str,
        device: torch.device,
    ) -> tuple[_SelfAttentionContext, tuple[Tensor, Tensor]]:
        """Frame indices, cached keys/values and RoPE tables of the groups, padded to common lengths.

        One group keeps (L,) frames and its cache tensors as they are; several get (N, L) frames and
        caches zero-padded to the longest (padding keys have frame −1). Cached copies of a group's
        input frames get frame −1 too: the input supersedes them.
        """
        batch, tokens, f_max, groups = forwards[0].x.shape[0], rows * cols, max(sizes), len(forwards)
        q_frames, k_current, cos, sin = [], [], [], []
        for fw, size in zip(forwards, sizes, strict=True):
            own = torch.arange(fw.frame_offset, fw.frame_offset + size, device=device)
            q_frames.append(_pad_frames(own, 0, f_max).repeat_interleave(tokens))
            k_current.append(F.pad(own, (0, f_max - size), value=-1).repeat_interleave(tokens))
            table_cos, table_sin = self._rotary_emb(size, rows, cols, fw.frame_offset)
            cos.append(_pad_frames(table_cos.unflatten(1, (size, tokens)), 1, f_max).flatten(1, 2))
            sin.append(_pad_frames(table_sin.unflatten(1, (size, tokens)), 1, f_max).flatten(1, 2))

        lengths = [0 if fw.cache is None else len(fw.cache) for fw in forwards]
        c_max = max(lengths)
        k_cached = []
        for fw, size, length in zip(forwards, sizes, lengths, strict=True):
            frames = fw.cache.frames.to(device) if length else torch.empty(0, dtype=torch.long, device=device)
            superseded = (frames >= fw.frame_offset) & (frames < fw.frame_offset + size)
            k_cached.append(F.pad(frames.masked_fill(superseded, -1), (0, c_max - length), value=-1))
        cached: list[tuple[Tensor, Tensor] | None] = [None] * len(self.blocks)
        if c_max:
            like = next(fw.cache for fw, length in zip(forwards, lengths, strict=True) if length)
            for layer in range(len(self.blocks)):
                cached[layer] = tuple(
                    torch.cat([_pad_cache(getattr(fw.cache, store)[layer] if length else None,
                                          getattr(like, store)[layer], batch, c_max)
                               for fw, length in zip(forwards, lengths, strict=True)])
                    if groups > 1 else getattr(like, store)[layer]
                    for store in ("keys", "values")
                )

        k_frames = [torch.cat([c, kc]) for c, kc in zip(k_cached, k_current, strict=True)]
        if groups == 1:  # one layout for the whole batch: (L,) frames, (1, L, 1, D) RoPE
            q_frames, k_frames, cos, sin = q_frames[0], k_frames[0], cos[0], sin[0]
        else:  # per sample: (N, L) frames, (N, L, 1, D) RoPE
            q_frames, k_frames = (torch.stack(f).repeat_interleave(batch, 0) for f in (q_frames, k_frames))
            cos, sin = (torch.cat(table).repeat_interleave(batch, 0) for table in (cos, sin))
        key_mask = None
        if mode == "bidirectional" and (c_max or groups > 1):
            key_mask = rearrange(k_frames >= 0, "... l -> ... 1 1 l")
        context = _SelfAttentionContext(
            mode=mode,
            q_frames=q_frames,
            k_frames=k_frames,
            frames_per_block=frames_per_block,
            window=window,
            backend=backend,
            cached=cached,
            write_tokens=max(fw.write_frames for fw in forwards) * tokens,
            key_mask=key_mask,
        )
        return context, (cos, sin)
