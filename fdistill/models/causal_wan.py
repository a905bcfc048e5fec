"""Wan2.1's transformer with frame offsets, per-frame timesteps and a block-causal KV cache.

``CausalWanTransformer3DModel`` subclasses diffusers' ``WanTransformer3DModel`` with the same config,
so ``from_pretrained`` loads real Wan2.1 checkpoints. It adds, per forward call:

- ``frame_offset``: the input's first latent frame is frame ``frame_offset`` of the video; RoPE and
  the attention mask use absolute frame indices.
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

Frames are post-patch temporal positions (latent frames for Wan2.1, whose temporal patch is 1).
With the defaults (bidirectional, no cache, offset 0, timestep (B,)) the call goes to the parent's
forward unchanged. Otherwise the model runs its own short loop over the parent's submodules;
diffusers hooks registered on whole transformer blocks (block-level offloading, context
parallelism, first-block cache) do not apply on that path.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

# diffusers' pipeline loader finds a component's loadable base class by name in its module
from diffusers import ModelMixin, WanTransformer3DModel  # noqa: F401
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.utils import apply_lora_scale

from fdistill.kernels import block_causal_attention

from .kv_cache import KVCache

AttentionMode = Literal["bidirectional", "block_causal"]

__all__ = ["AttentionMode", "CausalWanSelfAttnProcessor", "CausalWanTransformer3DModel"]


@dataclass
class _SelfAttentionContext:
    """What every self-attention layer needs to know about one forward call."""

    mode: AttentionMode
    q_frames: torch.Tensor  # (L,) frame index of each current token
    k_frames: torch.Tensor  # (Lc + L,) cached tokens first, then the current ones
    frames_per_block: int | None
    window: int | None
    backend: str
    cached: list[tuple[torch.Tensor, torch.Tensor] | None]  # per layer, (B, H, Lc, D) each
    write_tokens: int  # the first write_tokens current tokens go to the cache (0: none)
    written: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def _apply_rotary_emb(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
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
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        context: _SelfAttentionContext | None = None,
    ) -> torch.Tensor:
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

    def _attend(self, q, k, v, context: _SelfAttentionContext) -> torch.Tensor:
        """q, k, v: (B, H, L, D) current tokens -> (B, L, H, D)."""
        if context.write_tokens:
            # Assignment (not append) keeps gradient-checkpoint recomputation idempotent.
            n = context.write_tokens
            context.written[self.layer_idx] = (k[:, :, :n], v[:, :, :n])
        cached = context.cached[self.layer_idx]
        if cached is not None:
            k, v = torch.cat([cached[0], k], dim=2), torch.cat([cached[1], v], dim=2)
        if context.mode == "bidirectional":
            out = F.scaled_dot_product_attention(q, k, v)
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


def _modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """x: (B, F*T, C); scale, shift: (B, F, 1, C) per frame -> x * (1 + scale) + shift, frame by frame."""
    return (x.unflatten(1, (-1, tokens_per_frame)) * (1 + scale) + shift).flatten(1, 2)


def _gated(x: torch.Tensor, gate: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """x: (B, F*T, C); gate: (B, F, 1, C) per frame -> x * gate, frame by frame."""
    return (x.unflatten(1, (-1, tokens_per_frame)) * gate).flatten(1, 2)


def _framewise_block(
    block,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    timestep_proj: torch.Tensor,
    rotary_emb: tuple[torch.Tensor, torch.Tensor],
    tokens_per_frame: int,
    context: _SelfAttentionContext,
) -> torch.Tensor:
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

    def make_kv_cache(self, window: int | None = None) -> KVCache:
        """An empty cache for this model, keeping at most ``window`` frames (None: all)."""
        return KVCache(len(self.blocks), window=window)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None = None,
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
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
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
        return self._causal_forward(
            hidden_states,
            timestep,
            encoder_hidden_states,
            encoder_hidden_states_image,
            return_dict=return_dict,
            attention_kwargs=attention_kwargs,
            frame_offset=frame_offset,
            attention=attention,
            frames_per_block=frames_per_block,
            window=window,
            kv_cache=kv_cache,
            update_cache=update_cache,
            cache_write_frames=cache_write_frames,
            attention_backend=attention_backend,
        )

    @apply_lora_scale("attention_kwargs")
    def _causal_forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None,
        *,
        return_dict: bool,
        attention_kwargs: dict[str, Any] | None,
        frame_offset: int,
        attention: AttentionMode,
        frames_per_block: int | None,
        window: int | None,
        kv_cache: KVCache | None,
        update_cache: bool,
        cache_write_frames: int | None,
        attention_backend: str,
    ):
        batch, _, num_frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        frames, rows, cols = num_frames // p_t, height // p_h, width // p_w
        tokens_per_frame = rows * cols

        rotary_emb = self._rotary_emb(frames, rows, cols, frame_offset)
        x = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()

        per_frame_t = timestep if timestep.ndim == 2 else timestep[:, None]
        if per_frame_t.shape not in ((batch, 1), (batch, frames)):
            raise ValueError(f"timestep must be (B,) or (B, F) = ({batch}, {frames}); got {tuple(timestep.shape)}")
        temb, timestep_proj, context, context_img = self.condition_embedder(
            per_frame_t.flatten(),
            encoder_hidden_states,
            encoder_hidden_states_image,
            timestep_seq_len=per_frame_t.shape[1],
        )
        timestep_proj = timestep_proj.unflatten(2, (6, -1))  # (B, F or 1, 6, C)
        if context_img is not None:
            context = torch.cat([context_img, context], dim=1)

        write_frames = (frames if cache_write_frames is None else cache_write_frames) if update_cache else 0
        if not 0 <= write_frames <= frames:
            raise ValueError(f"cache_write_frames={cache_write_frames} outside [0, {frames}]")
        attn_context = self._attention_context(
            attention,
            frame_offset,
            frames,
            tokens_per_frame,
            frames_per_block,
            window,
            kv_cache,
            write_frames * tokens_per_frame,
            attention_backend,
            x.device,
        )

        for block in self.blocks:
            args = (block, x, context, timestep_proj, rotary_emb, tokens_per_frame, attn_context)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(_framewise_block, *args)
            else:
                x = _framewise_block(*args)

        if write_frames:
            layers = range(len(self.blocks))
            kv_cache.update(
                [attn_context.written[i][0] for i in layers],
                [attn_context.written[i][1] for i in layers],
                attn_context.q_frames[: write_frames * tokens_per_frame],
            )

        table = self.scale_shift_table.unsqueeze(0).to(temb.device)  # (1, 1, 2, C)
        shift, scale = (table + temb.unsqueeze(2)).unsqueeze(3).unbind(2)  # (B, F or 1, 1, C) each
        norm_x = _modulate(self.norm_out(x.float()), scale.to(x.device), shift.to(x.device), tokens_per_frame)
        x = self.proj_out(norm_x.type_as(x))

        x = x.reshape(batch, frames, rows, cols, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        output = x.flatten(6, 7).flatten(4, 5).flatten(2, 3)
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)

    def _rotary_emb(self, frames: int, rows: int, cols: int, frame_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Wan's 3-D RoPE tables for frames frame_offset.., as (1, F*rows*cols, 1, head_dim) cos and sin."""
        rope = self.rope
        if frame_offset < 0 or frame_offset + frames > rope.max_seq_len:
            raise ValueError(
                f"frames {frame_offset}..{frame_offset + frames - 1} exceed RoPE's rope_max_seq_len={rope.max_seq_len}"
            )
        tables = []
        for freqs in (rope.freqs_cos, rope.freqs_sin):
            f_t, f_h, f_w = freqs.split([rope.t_dim, rope.h_dim, rope.w_dim], dim=1)
            grid = (frames, rows, cols)
            tables.append(
                torch.cat(
                    [
                        f_t[frame_offset : frame_offset + frames].view(frames, 1, 1, -1).expand(*grid, -1),
                        f_h[:rows].view(1, rows, 1, -1).expand(*grid, -1),
                        f_w[:cols].view(1, 1, cols, -1).expand(*grid, -1),
                    ],
                    dim=-1,
                ).reshape(1, frames * rows * cols, 1, -1)
            )
        return tables[0], tables[1]

    def _attention_context(
        self,
        mode: AttentionMode,
        frame_offset: int,
        frames: int,
        tokens_per_frame: int,
        frames_per_block: int | None,
        window: int | None,
        kv_cache: KVCache | None,
        write_tokens: int,
        backend: str,
        device: torch.device,
    ) -> _SelfAttentionContext:
        q_frames = torch.arange(frame_offset, frame_offset + frames, device=device)
        q_frames = q_frames.repeat_interleave(tokens_per_frame)
        cached: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.blocks)
        k_frames = q_frames
        if kv_cache is not None and kv_cache.frames is not None:
            # The input supersedes cached copies of its own frames.
            keep = (kv_cache.frames < frame_offset) | (kv_cache.frames >= frame_offset + frames)
            select = None if bool(keep.all()) else keep
            for i, (k, v) in enumerate(zip(kv_cache.keys, kv_cache.values, strict=True)):
                cached[i] = (k, v) if select is None else (k[:, :, select], v[:, :, select])
            k_frames = torch.cat([kv_cache.frames if select is None else kv_cache.frames[select], q_frames])
        return _SelfAttentionContext(
            mode=mode,
            q_frames=q_frames,
            k_frames=k_frames,
            frames_per_block=frames_per_block,
            window=window,
            backend=backend,
            cached=cached,
            write_tokens=write_tokens,
        )
