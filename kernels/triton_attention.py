"""Fused block-causal attention in Triton: forward and backward kernels, no mask in memory.

The rule of ``attention.py`` becomes one interval per query: a query of frame ``f_q`` in block
``i = f_q // F`` sees exactly the keys of frame ``f_k`` with

    lo(f_q) = max(0, (i + 1) * F - W) <= f_k <= hi(f_q) = (i + 1) * F - 1      (lo = 0 without a window)

so padding keys (negative frame) drop out by themselves. The kernels read per-token intervals and
key frames (int32, a few KiB) and test them tile by tile; nothing of size Lq × Lk is stored.

Tile skipping is a block-sparse layout computed on the host from the frame indices (small torch
ops, no device-to-host sync): per query tile, the list of key tiles whose frame range meets the
tile's [min lo, max hi]. Sorted frames (training, a KV cache followed by the current tokens) give a
contiguous run of tiles, e.g. the causal triangle; unsorted or padded key frames give whatever tiles
can hold a visible key. Either way the kernel loops over that list only, with unconditional loads
(which Triton can pipeline) and an element mask on each visited tile.

Backward: Triton kernels too (FlashAttention-2 style: a dK/dV kernel over key tiles and a dQ
kernel over query tiles, both recomputing P from the saved log-sum-exp), wrapped in
:class:`BlockCausalAttention`, an ``autograd.Function``.

Precision: float16, bfloat16 and float32 on CUDA; float32 and float16 under ``TRITON_INTERPRET=1``
on the CPU (the interpreter computes bf16 ``tl.dot`` wrongly, so bfloat16 is refused there).
Accumulation is float32. float32 ``tl.dot`` uses TF32 only when
``torch.backends.cuda.matmul.allow_tf32`` is set, like torch's matmuls. Head dims 16–128 (padded to
a power of two inside the kernel). Queries that see no key give zeros (the reference gives NaN).

``TRITON_INTERPRET`` must be set before ``triton`` is first imported in the process: ``triton.jit``
reads it when this module (and triton.language's own jit functions, such as ``tl.sum``) are
decorated. ``INTERPRETED`` records which mode the kernels were built in.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

__all__ = ["INTERPRETED", "BlockCausalAttention", "triton_block_causal_attention"]

_LOG2E = 1.4426950408889634


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, QLO, QHI, KF, COUNT, INDEX,
                sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, so_b, so_h, so_l,
                plan_batched, H, LQ, LK, D, NQT, NKT, qk_scale,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    m_tile, bh = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)  # int64: b * stride can pass 2**31
    p = b * plan_batched  # row of the frame / plan tensors: the sample's, or the shared one
    rows = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok, dim_ok = rows < LQ, dims < D
    q = tl.load(Q + b * sq_b + h * sq_h + rows[:, None] * sq_l + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    lo = tl.load(QLO + p * LQ + rows, mask=row_ok, other=1)
    hi = tl.load(QHI + p * LQ + rows, mask=row_ok, other=-1)  # lo > hi: a row past Lq sees nothing

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    plan_row = p * NQT + m_tile
    count = tl.load(COUNT + plan_row)
    for i in range(0, count):
        n_tile = tl.load(INDEX + plan_row * NKT + i)
        cols = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < LK
        kf = tl.load(KF + p * LK + cols, mask=col_ok, other=-1)
        kt = tl.load(K + b * sk_b + h * sk_h + cols[None, :] * sk_l + dims[:, None],
                     mask=col_ok[None, :] & dim_ok[:, None], other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale  # log2 units
        visible = (kf[None, :] >= lo[:, None]) & (kf[None, :] <= hi[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet
        prob = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(prob, 1)
        v = tl.load(V + b * sv_b + h * sv_h + cols[:, None] * sv_l + dims[None, :],
                    mask=col_ok[:, None] & dim_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(prob.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    seen = l_i > 0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    tl.store(O + b * so_b + h * so_h + rows[:, None] * so_l + dims[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & dim_ok[None, :])
    # +inf for a query that saw nothing: the backward's exp2(s - lse) is then 0
    tl.store(LSE + bh * LQ + rows, tl.where(seen, m_i + tl.log2(l_safe), float("inf")), mask=row_ok)


@triton.jit
def _delta_kernel(O, DO, DELTA, so_b, so_h, so_l, sd_b, sd_h, sd_l, H, LQ, D,
                  BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """delta = rowsum(O ∘ dO), the softmax backward's correction term, (B·H, Lq) float32."""
    m_tile, bh = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)  # int64: b * stride can pass 2**31
    rows = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    mask = (rows < LQ)[:, None] & (dims < D)[None, :]
    o = tl.load(O + b * so_b + h * so_h + rows[:, None] * so_l + dims[None, :], mask=mask, other=0.0)
    do = tl.load(DO + b * sd_b + h * sd_h + rows[:, None] * sd_l + dims[None, :], mask=mask, other=0.0)
    tl.store(DELTA + bh * LQ + rows, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1), mask=rows < LQ)


@triton.jit
def _dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, QLO, QHI, KF, COUNT, INDEX,
                 sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, sd_b, sd_h, sd_l,
                 sdk_b, sdk_h, sdk_l, sdv_b, sdv_h, sdv_l,
                 plan_batched, H, LQ, LK, D, NQT, NKT, qk_scale, sm_scale,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """dK, dV of one key tile, over the query tiles that can see it (INDEX lists them per key tile)."""
    n_tile, bh = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)  # int64: b * stride can pass 2**31
    p = b * plan_batched
    cols = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    col_ok, dim_ok = cols < LK, dims < D
    kv_mask = col_ok[:, None] & dim_ok[None, :]
    k = tl.load(K + b * sk_b + h * sk_h + cols[:, None] * sk_l + dims[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + b * sv_b + h * sv_h + cols[:, None] * sv_l + dims[None, :], mask=kv_mask, other=0.0)
    kf = tl.load(KF + p * LK + cols, mask=col_ok, other=-1)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    plan_row = p * NKT + n_tile
    count = tl.load(COUNT + plan_row)
    for i in range(0, count):
        m_tile = tl.load(INDEX + plan_row * NQT + i)
        rows = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < LQ
        qt = tl.load(Q + b * sq_b + h * sq_h + rows[None, :] * sq_l + dims[:, None],
                     mask=row_ok[None, :] & dim_ok[:, None], other=0.0)
        do = tl.load(DO + b * sd_b + h * sd_h + rows[:, None] * sd_l + dims[None, :],
                     mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
        lo = tl.load(QLO + p * LQ + rows, mask=row_ok, other=1)
        hi = tl.load(QHI + p * LQ + rows, mask=row_ok, other=-1)
        lse = tl.load(LSE + bh * LQ + rows, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + bh * LQ + rows, mask=row_ok, other=0.0)
        st = tl.dot(k, qt, input_precision=PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M), log2 units
        visible = (kf[:, None] >= lo[None, :]) & (kf[:, None] <= hi[None, :])
        pt = tl.where(visible, tl.exp2(st - lse[None, :]), 0.0)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(qt.dtype), tl.trans(qt), input_precision=PRECISION)
    tl.store(DK + b * sdk_b + h * sdk_h + cols[:, None] * sdk_l + dims[None, :], (dk * sm_scale).to(DK.dtype.element_ty),
             mask=kv_mask)
    tl.store(DV + b * sdv_b + h * sdv_h + cols[:, None] * sdv_l + dims[None, :], dv.to(DV.dtype.element_ty),
             mask=kv_mask)


@triton.jit
def _dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, QLO, QHI, KF, COUNT, INDEX,
               sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, sd_b, sd_h, sd_l, sdq_b, sdq_h, sdq_l,
               plan_batched, H, LQ, LK, D, NQT, NKT, qk_scale, sm_scale,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """dQ of one query tile, over the key tiles it can see (INDEX lists them per query tile)."""
    m_tile, bh = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)  # int64: b * stride can pass 2**31
    p = b * plan_batched
    rows = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok, dim_ok = rows < LQ, dims < D
    q_mask = row_ok[:, None] & dim_ok[None, :]
    q = tl.load(Q + b * sq_b + h * sq_h + rows[:, None] * sq_l + dims[None, :], mask=q_mask, other=0.0)
    do = tl.load(DO + b * sd_b + h * sd_h + rows[:, None] * sd_l + dims[None, :], mask=q_mask, other=0.0)
    lo = tl.load(QLO + p * LQ + rows, mask=row_ok, other=1)
    hi = tl.load(QHI + p * LQ + rows, mask=row_ok, other=-1)
    lse = tl.load(LSE + bh * LQ + rows, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + bh * LQ + rows, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    plan_row = p * NQT + m_tile
    count = tl.load(COUNT + plan_row)
    for i in range(0, count):
        n_tile = tl.load(INDEX + plan_row * NKT + i)
        cols = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < LK
        kt_mask = col_ok[None, :] & dim_ok[:, None]
        kt = tl.load(K + b * sk_b + h * sk_h + cols[None, :] * sk_l + dims[:, None], mask=kt_mask, other=0.0)
        vt = tl.load(V + b * sv_b + h * sv_h + cols[None, :] * sv_l + dims[:, None], mask=kt_mask, other=0.0)
        kf = tl.load(KF + p * LK + cols, mask=col_ok, other=-1)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        visible = (kf[None, :] >= lo[:, None]) & (kf[None, :] <= hi[:, None])
        prob = tl.where(visible, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, vt, input_precision=PRECISION)
        ds = prob * (dp - delta[:, None])
        dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PRECISION)
    tl.store(DQ + b * sdq_b + h * sdq_h + rows[:, None] * sdq_l + dims[None, :], (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=q_mask)


INTERPRETED: bool = isinstance(_fwd_kernel, InterpretedFunction)
if INTERPRETED != isinstance(tl.sum, InterpretedFunction):
    raise ImportError("TRITON_INTERPRET changed after triton was imported: set it before anything imports triton "
                      "(importing diffusers does), e.g. in the environment of the process")


def _tiles(dtype: torch.dtype, block_d: int) -> dict[str, tuple[int, int, int, int]]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel.

    Fixed rather than autotuned: the host-side tile plan depends on the tile sizes, and the
    interpreter cannot autotune. Chosen so that no kernel spills registers on sm_90 at head dims
    64 and 128 (compiled ahead of time, ``cuobjdump --dump-resource-usage``); speed is the benchmark's.
    """
    if INTERPRETED:  # small tiles: several per test sequence, so skipping and tile edges are exercised
        return dict.fromkeys(("fwd", "dkdv", "dq"), (16, 16, 1, 1))
    if dtype == torch.float32:
        return {"fwd": (32, 64, 8, 2), "dkdv": (16, 64, 8, 2), "dq": (64, 32, 8, 2)}
    return {"fwd": (128, 64, 8, 3), "dkdv": (32, 64 if block_d > 64 else 128, 8, 2), "dq": (128, 32, 8, 2)}


def _precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision: it only matters for float32 (IEEE unless torch allows TF32)."""
    return "ieee" if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32 else "tf32"


def _query_intervals(q_frames: torch.Tensor, frames_per_block: int, window: int | None):
    """Per query, the visible key frames [lo, hi] (int32, same shape as q_frames)."""
    block = torch.div(q_frames, frames_per_block, rounding_mode="floor")
    hi = (block + 1) * frames_per_block - 1
    lo = torch.zeros_like(hi) if window is None else (hi + 1 - window).clamp_min(0)
    return lo.to(torch.int32).contiguous(), hi.to(torch.int32).contiguous()


def _tile_ranges(lo: torch.Tensor, hi: torch.Tensor, k_frames: torch.Tensor, block_m: int, block_n: int):
    """Which (query tile, key tile) pairs can hold a visible pair: (P, n_q_tiles, n_k_tiles) bool.

    A query tile's interval is [min lo, max hi] over its rows; a key tile's is [min, max] of its
    non-negative frames (empty when all are padding).
    """
    big = torch.iinfo(torch.int32).max
    pad_q = -lo.shape[-1] % block_m
    tile_lo = torch.nn.functional.pad(lo, (0, pad_q), value=big).unflatten(-1, (-1, block_m)).amin(-1)
    tile_hi = torch.nn.functional.pad(hi, (0, pad_q), value=-1).unflatten(-1, (-1, block_m)).amax(-1)
    keys = torch.nn.functional.pad(k_frames, (0, -k_frames.shape[-1] % block_n), value=-1).unflatten(-1, (-1, block_n))
    key_lo = torch.where(keys >= 0, keys, big).amin(-1)
    key_hi = keys.amax(-1)
    return (key_hi[:, None, :] >= tile_lo[:, :, None]) & (key_lo[:, None, :] <= tile_hi[:, :, None])


def _tile_lists(hits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``hits`` (..., n), the number of hit tiles and their indices first, ascending:
    (count (...,) int32, index (..., n) int32 contiguous)."""
    index = torch.sort((~hits).to(torch.int8), dim=-1, stable=True).indices
    return hits.sum(-1, dtype=torch.int32).contiguous(), index.to(torch.int32).contiguous()


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _forward(q, k, v, lo, hi, kf):
    batch, heads, len_q, dim = q.shape
    len_k = k.shape[2]
    block_d = max(16, triton.next_power_of_2(dim))
    block_m, block_n, warps, stages = _tiles(q.dtype, block_d)["fwd"]
    count, index = _tile_lists(_tile_ranges(lo, hi, kf, block_m, block_n))
    out = torch.empty_like(q)  # q's strides: (B, L, H, D) storage stays (B, L, H, D)
    lse = torch.empty(batch * heads, len_q, device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(len_q, block_m), batch * heads)
    _fwd_kernel[grid](q, k, v, out, lse, lo, hi, kf, count, index,
                      *_strides(q), *_strides(k), *_strides(v), *_strides(out),
                      int(lo.shape[0] > 1), heads, len_q, len_k, dim, count.shape[1], index.shape[2],
                      _LOG2E / math.sqrt(dim),
                      BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=_precision(q.dtype),
                      num_warps=warps, num_stages=stages)
    return out, lse


def _backward(do, q, k, v, out, lse, lo, hi, kf):
    batch, heads, len_q, dim = q.shape
    len_k = k.shape[2]
    block_d = max(16, triton.next_power_of_2(dim))
    tiles, precision, batched = _tiles(q.dtype, block_d), _precision(q.dtype), int(lo.shape[0] > 1)
    sm_scale = 1 / math.sqrt(dim)
    delta = torch.empty_like(lse)
    _delta_kernel[(triton.cdiv(len_q, 32), batch * heads)](out, do, delta, *_strides(out), *_strides(do), heads, len_q,
                                                           dim, BLOCK_M=32, BLOCK_D=block_d)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    sizes = (heads, len_q, len_k, dim)

    block_m, block_n, warps, stages = tiles["dkdv"]
    count, index = _tile_lists(_tile_ranges(lo, hi, kf, block_m, block_n).transpose(1, 2))
    _dkdv_kernel[(triton.cdiv(len_k, block_n), batch * heads)](
        q, k, v, do, dk, dv, lse, delta, lo, hi, kf, count, index,
        *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dk), *_strides(dv),
        batched, *sizes, index.shape[2], count.shape[1], _LOG2E * sm_scale, sm_scale,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=precision, num_warps=warps, num_stages=stages)

    block_m, block_n, warps, stages = tiles["dq"]
    count, index = _tile_lists(_tile_ranges(lo, hi, kf, block_m, block_n))
    _dq_kernel[(triton.cdiv(len_q, block_m), batch * heads)](
        q, k, v, do, dq, lse, delta, lo, hi, kf, count, index,
        *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dq),
        batched, *sizes, count.shape[1], index.shape[2], _LOG2E * sm_scale, sm_scale,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=precision, num_warps=warps, num_stages=stages)
    return dq, dk, dv


class BlockCausalAttention(torch.autograd.Function):
    """Triton forward and backward of block-causal attention over precomputed query intervals.

    forward(q, k, v, lo, hi, k_frames): q (B, H, Lq, D); k, v (B, H, Lk, D); lo, hi (P, Lq) int32
    visible key-frame interval per query; k_frames (P, Lk) int32; P is 1 (shared) or B (per sample).
    Saves the output and the (B·H, Lq) log-sum-exp; the backward recomputes the probabilities.
    """

    @staticmethod
    def forward(ctx, q, k, v, lo, hi, k_frames):
        out, lse = _forward(q, k, v, lo, hi, k_frames)
        ctx.save_for_backward(q, k, v, out, lse, lo, hi, k_frames)
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse, lo, hi, k_frames = ctx.saved_tensors
        dq, dk, dv = _backward(_last_dim_contiguous(do), q, k, v, out, lse, lo, hi, k_frames)
        return dq, dk, dv, None, None, None


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def triton_block_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_frames: torch.Tensor,
                                  k_frames: torch.Tensor, frames_per_block: int, window: int | None) -> torch.Tensor:
    """The ``backend="triton"`` body of ``block_causal_attention`` (shapes and rule as there).

    q: (B, H, Lq, D); k, v: (B, H, Lk, D); q_frames (Lq,) or (B, Lq); k_frames (Lk,) or (B, Lk).
    Returns (B, H, Lq, D) in q's dtype, differentiable in q, k and v.
    """
    if not 16 <= q.shape[-1] <= 128:
        raise ValueError(f"backend='triton' supports head dims 16..128, got {q.shape[-1]}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"backend='triton' needs q, k, v of one dtype among float16, bfloat16, float32; got "
                         f"{q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.is_cuda or INTERPRETED):
        raise RuntimeError("backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before triton is first "
                           "imported (the CPU interpreter, for tests)")
    if INTERPRETED and q.dtype == torch.bfloat16:
        raise ValueError("backend='triton' under TRITON_INTERPRET=1 supports float32 and float16, not bfloat16 "
                         "(the interpreter's bf16 tl.dot is wrong)")
    plans = max(q_frames.reshape(-1, q.shape[2]).shape[0], k_frames.reshape(-1, k.shape[2]).shape[0])
    lo, hi = _query_intervals(q_frames.reshape(-1, q.shape[2]).expand(plans, -1), frames_per_block, window)
    kf = k_frames.reshape(-1, k.shape[2]).expand(plans, -1).to(torch.int32).contiguous()
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    return BlockCausalAttention.apply(q, k, v, lo, hi, kf)
