"""Block-causal attention with an optional rolling window, behind one entry point.

Tokens carry absolute (latent) frame indices. With ``frames_per_block = F`` a query of frame ``f_q``
sits in block ``i = f_q // F`` and sees a key of frame ``f_k`` iff

    f_k // F <= i                         (no key from a later block)
    f_k >= (i + 1) * F - W                (rolling window of W frames, when ``window = W``)
    f_k >= 0                              (negative frame indices mark padding keys)

``(i + 1) * F - 1`` is the last frame of the query's block, so the window always holds the whole
block of the query (hence ``W >= F``). Keys may come from a KV cache of earlier frames followed by
the current tokens: only the frame indices matter, not the order of the keys.

Backends (``backend=``):

- ``"sdpa"``: materialised boolean mask + ``F.scaled_dot_product_attention``; everywhere, backward.
- ``"flex"``: ``torch.nn.attention.flex_attention`` with a block mask built from the same rule;
  compiled on CUDA, eager (forward only is tested) on CPU.
- ``"xformers"``: ``xformers.ops.memory_efficient_attention`` with an additive bias; CUDA only,
  imported lazily, an optional extra.
- ``"reference"``: softmax(QKᵀ/√d) in float32 with the mask; the oracle for tests.
- ``"triton"``: the fused Triton kernels of ``triton_attention.py`` (forward and backward, no mask in
  memory, fully masked tiles skipped); CUDA, or the CPU under ``TRITON_INTERPRET=1`` (tests).
  Imported on first use, so ``import fdistill.kernels`` does not import Triton.
- ``"auto"``: on CUDA, the fastest backend available of ``MEASURED_SPEED_ORDER`` for the GPU and the
  dtype (measured by ``scripts/bench_attention.py``); for a GPU or dtype not measured, xformers
  when installed, otherwise sdpa. On the CPU: sdpa.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F

BACKENDS: tuple[str, ...] = ("auto", "sdpa", "flex", "xformers", "reference", "triton")

# Backends fastest first, per (substring of the CUDA device name, dtype), from the rows of
# scripts/bench_attention.py's report (train and cached cases, forward and forward + backward):
# reports/attention_bench_h100.json (float32; sdpa < flex at every length). Add a row per measured GPU.
MEASURED_SPEED_ORDER: dict[tuple[str, torch.dtype], tuple[str, ...]] = {
    ("H100", torch.float32): ("sdpa", "flex"),
}

__all__ = ["BACKENDS", "MEASURED_SPEED_ORDER", "available_backends", "block_causal_attention", "block_causal_mask"]


def _check_blocking(frames_per_block: int, window: int | None) -> None:
    if not isinstance(frames_per_block, int) or frames_per_block < 1:
        raise ValueError(f"frames_per_block must be a positive int, got {frames_per_block!r}")
    if window is not None and window < frames_per_block:
        raise ValueError(
            f"window={window} is shorter than frames_per_block={frames_per_block}: the rolling window "
            "must hold the whole block of each query"
        )


def _visible(q_frame: torch.Tensor, k_frame: torch.Tensor, frames_per_block: int, window: int | None):
    """The masking rule on broadcastable frame-index tensors (shared by the mask and flex's mask_mod)."""
    q_block = torch.div(q_frame, frames_per_block, rounding_mode="floor")
    k_block = torch.div(k_frame, frames_per_block, rounding_mode="floor")
    visible = (k_block <= q_block) & (k_frame >= 0)
    if window is not None:
        visible = visible & (k_frame >= (q_block + 1) * frames_per_block - window)
    return visible


def block_causal_mask(
    q_frames: torch.Tensor, k_frames: torch.Tensor, *, frames_per_block: int, window: int | None = None
) -> torch.Tensor:
    """Boolean attention mask, True where a query may attend a key.

    Args:
        q_frames: (Lq,) or (B, Lq) absolute frame index of each query token.
        k_frames: (Lk,) or (B, Lk) absolute frame index of each key token (negative: padding).
        frames_per_block: F, frames per causal block.
        window: W, rolling window in frames (None: unlimited); W >= F.

    Returns:
        (Lq, Lk) bool, or (B, Lq, Lk) when either frame tensor is batched.
    """
    _check_blocking(frames_per_block, window)
    return _visible(q_frames.unsqueeze(-1), k_frames.unsqueeze(-2), frames_per_block, window)


@functools.cache  # installed packages do not change within a process; "auto" asks on every call
def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _xformers_available() -> bool:
    return _installed("xformers")


def _flex_available() -> bool:
    return _installed("torch.nn.attention.flex_attention")


_TRITON_MODULE = f"{__package__}.triton_attention"


def _triton_interpreted() -> bool:
    """Whether the Triton kernels run (or, once imported, will run) in the CPU interpreter."""
    module = sys.modules.get(_TRITON_MODULE)
    if module is not None:
        return module.INTERPRETED
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def _triton_available(device: torch.device) -> bool:
    return _installed("triton") and (device.type == "cuda" or _triton_interpreted())


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Concrete backends usable on ``device`` (excludes "auto"; "triton" on the CPU only under the interpreter)."""
    device = torch.device(device)
    names = ["sdpa", "reference"]
    if _flex_available():
        names.append("flex")
    if device.type == "cuda" and _xformers_available():
        names.append("xformers")
    if _triton_available(device):
        names.append("triton")
    return names


def _cuda_auto_order(device_name: str, dtype: torch.dtype) -> tuple[str, ...]:
    """Candidates for "auto" on a CUDA device, fastest first (unmeasured: xformers, then sdpa)."""
    for (name, measured_dtype), order in MEASURED_SPEED_ORDER.items():
        if name in device_name and measured_dtype == dtype:
            return order
    return ("xformers", "sdpa")


@functools.cache
def _cuda_device_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def _auto(q: torch.Tensor) -> str:
    if not q.is_cuda:
        return "sdpa"
    usable = available_backends(q.device)
    order = _cuda_auto_order(_cuda_device_name(q.device.index or 0), q.dtype)
    return next((name for name in order if name in usable), "sdpa")


def _reference(q, k, v, mask):
    scores = q.float() @ k.float().transpose(-2, -1) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


def _sdpa(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@functools.cache
def _compiled_flex_attention() -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


_BLOCK_MASKS: OrderedDict = OrderedDict()
_BLOCK_MASK_CACHE_SIZE = 64


def _flex_block_mask(q_frames, k_frames, frames_per_block, window, batch, lq, lk, device):
    """``create_block_mask`` for one frame layout, memoised (building it costs ~10 ms on a GPU).

    The key holds the frame indices' values (a small device-to-host copy), so a cached mask is
    reused only for exactly the same layout; least recently used masks are dropped past 64.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    key = (str(device), batch, lq, lk, frames_per_block, window,
           tuple(q_frames.shape), q_frames.cpu().numpy().tobytes(), tuple(k_frames.shape),
           k_frames.cpu().numpy().tobytes())
    if key in _BLOCK_MASKS:
        _BLOCK_MASKS.move_to_end(key)
        return _BLOCK_MASKS[key]
    if batch is not None:

        def mask_mod(b, h, q_idx, kv_idx):
            return _visible(q_frames[b, q_idx], k_frames[b, kv_idx], frames_per_block, window)
    else:

        def mask_mod(b, h, q_idx, kv_idx):
            return _visible(q_frames[q_idx], k_frames[kv_idx], frames_per_block, window)

    mask = create_block_mask(mask_mod, batch, None, lq, lk, device=device)
    _BLOCK_MASKS[key] = mask
    if len(_BLOCK_MASKS) > _BLOCK_MASK_CACHE_SIZE:
        _BLOCK_MASKS.popitem(last=False)
    return mask


def _flex(q, k, v, q_frames, k_frames, frames_per_block, window):
    from torch.nn.attention.flex_attention import flex_attention

    batched = q_frames.ndim == 2 or k_frames.ndim == 2
    if batched:
        q_frames, k_frames = q_frames.expand(q.shape[0], -1), k_frames.expand(q.shape[0], -1)
    block_mask = _flex_block_mask(q_frames, k_frames, frames_per_block, window, q.shape[0] if batched else None,
                                  q.shape[-2], k.shape[-2], q.device)
    if q.is_cuda:
        return _compiled_flex_attention()(q, k, v, block_mask=block_mask)
    with warnings.catch_warnings():
        # Eager flex attention on CPU materialises the scores; it is the CPU test path, not a fast path.
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(q, k, v, block_mask=block_mask)


def _xformers(q, k, v, mask):
    if not q.is_cuda or not _xformers_available():
        raise RuntimeError("backend='xformers' needs CUDA tensors and the optional xformers package")
    import xformers.ops as xops

    batch, heads, len_q, len_k = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    # xformers wants the bias rows aligned to 8 elements: slice a padded allocation.
    padded = (len_k + 7) // 8 * 8
    bias = torch.zeros(*mask.shape[:-1], padded, dtype=q.dtype, device=q.device)[..., :len_k]
    bias.masked_fill_(~mask, float("-inf"))
    bias = bias.expand(batch, heads, len_q, len_k)
    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
    return out.transpose(1, 2)


def _resolve(backend: str, q: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if backend == "auto":
        return _auto(q)
    if backend == "flex" and not _flex_available():
        raise RuntimeError("backend='flex' needs torch.nn.attention.flex_attention (PyTorch >= 2.5)")
    if backend == "triton" and not _triton_available(q.device):
        raise RuntimeError(
            "backend='triton' needs the triton package and CUDA tensors, or TRITON_INTERPRET=1 set before "
            f"triton is first imported (the CPU interpreter, for tests); got a {q.device.type} tensor"
        )
    return backend


def block_causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    q_frames: torch.Tensor,
    k_frames: torch.Tensor,
    frames_per_block: int,
    window: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention of queries over keys restricted to earlier-or-same blocks (and a rolling window).

    Args:
        q: (B, H, Lq, D) queries.
        k, v: (B, H, Lk, D) keys and values, e.g. a KV cache of earlier frames followed by the
            current tokens.
        q_frames: (Lq,) or (B, Lq) integer absolute frame index of each query token.
        k_frames: (Lk,) or (B, Lk) integer absolute frame index of each key token; a negative
            index marks a padding key that is never attended.
        frames_per_block: F; a query of frame f is in block f // F and sees keys of blocks <= its own.
        window: W, attend only to keys of frame >= (last frame of the query's block) + 1 - W;
            None for no window. W >= F.
        backend: one of ``BACKENDS`` (see the module docstring).

    Every query must see at least one key (true whenever the query's own frame is among the keys);
    a query that sees none gives NaN ("sdpa", "reference") or zeros ("flex", "triton").

    Returns:
        (B, H, Lq, D), dtype of q.
    """
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"expected q (B, H, Lq, D) and k, v (B, H, Lk, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q_frames.shape[-1] != q.shape[2] or k_frames.shape[-1] != k.shape[2]:
        raise ValueError(
            f"q_frames {tuple(q_frames.shape)} / k_frames {tuple(k_frames.shape)} do not match "
            f"Lq={q.shape[2]} / Lk={k.shape[2]}"
        )
    _check_blocking(frames_per_block, window)
    backend = _resolve(backend, q)
    q_frames, k_frames = q_frames.to(q.device), k_frames.to(q.device)
    if backend == "flex":
        return _flex(q, k, v, q_frames, k_frames, frames_per_block, window)
    if backend == "triton":
        from .triton_attention import triton_block_causal_attention

        return triton_block_causal_attention(q, k, v, q_frames, k_frames, frames_per_block, window)
    mask = block_causal_mask(q_frames, k_frames, frames_per_block=frames_per_block, window=window)
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)  # (B, 1, Lq, Lk): the same mask for every head
    if backend == "reference":
        return _reference(q, k, v, mask)
    if backend == "xformers":
        return _xformers(q, k, v, mask)
    return _sdpa(q, k, v, mask)
