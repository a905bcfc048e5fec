"""The HiAR cell and the single-process schedules over it (DESIGN.md, "HiAR: one cell, several schedules").

A video is N blocks of F latent frames; the student denoises at K times t_0 > … > t_{K−1}, and
t_K = 0. The unit of work is the **cell (k, b)**: block b's latent x_b^k at t_k is denoised against
the KV cache of step k, giving x̂0; it is re-noised to t_{k+1} (fresh noise ε(k, b) from the
:class:`NoiseBank`, or a DDIM/ODE step), x_b^{k+1}; and, when later cells read it, x_b^{k+1} is
written into that cache by a forward at t_{k+1} (at the last step: x̂0 at t = 0).

Which cache a cell reads is all that tells the orders apart:

- step-first orders (hierarchical, wavefront, pipelined) keep one cache per step. With
  ``context="next"`` (HiAR's released code) step k's cache holds earlier blocks at t_{k+1}, written
  by the cell itself after the re-noise; with ``context="same"`` it holds them at t_k, which is
  exactly the denoise forward's own input, so the denoise forward writes it and no write forward is
  needed (K forwards per block instead of 2K).
- sequential (Self-Forcing / CausVid order) has one cache of clean outputs that every step reads;
  only the last step writes.

Cell (k, b) needs (k, b − 1) (the cache) and (k − 1, b) (its input), so ``hierarchical`` (for k:
for b) and ``wavefront`` (all cells with k + b = s in one batched forward) compute the same video;
``hiar_parallel`` runs the same cells with rank k owning step k.

Fused write: a write forward of block b is always followed by the denoise of block b + 1 against
the same cache, so with ``fused=True`` the write is deferred and prepended to that forward (per-frame
timesteps, ``cache_write_frames`` = F). Block-causal attention makes this exact. It removes the
K·(N − 1) write forwards of ``context="next"`` (N − 1 for sequential; nobody reads the last block's
writes, so they are skipped either way); the written frames still pass through the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from fdistill.models.causal_wan import CacheForward, CausalWanTransformer3DModel
from fdistill.models.kv_cache import KVCache
from fdistill.schedules import NoiseSchedule

ORDERS: tuple[str, ...] = ("sequential", "hierarchical", "wavefront", "pipelined")
CONTEXTS: tuple[str, ...] = ("next", "same")
RENOISE_MODES: tuple[str, ...] = ("noise", "ode")

Order = Literal["sequential", "hierarchical", "wavefront", "pipelined"]
Cell = tuple[int, int]  # (k, b): step k of block b

__all__ = [
    "CONTEXTS",
    "ORDERS",
    "RENOISE_MODES",
    "HiARCells",
    "HiARPlan",
    "NoiseBank",
    "cell_waves",
    "check_order",
    "denoising_times",
    "generate_video",
    "run_cells",
]


def check_order(order: str) -> None:
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; valid orders: {', '.join(ORDERS)}")


def denoising_times(schedule: NoiseSchedule, steps: int | Sequence[float]) -> tuple[float, ...]:
    """The cell grid's times (t_0, …, t_{K−1}, 0) in schedule units.

    ``steps`` is K (the schedule's ``sampling_times(K)``) or a list of training timesteps such as
    [1000, 750, 500, 250] (Self-Forcing's ``denoising_step_list``), read as t = step / 1000 and
    warped by the flow-matching ``shift`` as Self-Forcing's ``warp_denoising_step`` does.
    """
    if isinstance(steps, int):
        if steps < 1:
            raise ValueError(f"denoising_steps must be >= 1, got {steps}")
        times = schedule.sampling_times(steps)
    else:
        raw = torch.as_tensor(list(steps), dtype=torch.float64).reshape(-1)
        if raw.numel() == 0 or (raw.diff() >= 0).any() or raw.min() <= 0 or raw.max() > 1000:
            raise ValueError(f"denoising_steps must be decreasing timesteps in (0, 1000], got {list(steps)}")
        t = raw / 1000
        times = torch.cat([schedule.shift_t(t) if hasattr(schedule, "shift_t") else t, torch.zeros(1)])
    return tuple(float(t) for t in times)


def check_sink_frames(sink_frames: int, window: int | None, frames_per_block: int, name: str = "sink_frames") -> None:
    """An attention sink of ``sink_frames`` needs a window W whose caches (W − frames_per_block frames) keep at least
    one frame besides it; 0 turns it off. ``name``: how the caller spells the setting in the error."""
    if sink_frames < 0 or (sink_frames and (window is None or sink_frames >= window - frames_per_block)):
        raise ValueError(f"{name}={sink_frames} needs a window W with W − frames_per_block > sink_frames "
                         f"(window={window}, frames_per_block={frames_per_block}); 0 turns the sink off")


@dataclass(frozen=True)
class HiARPlan:
    """Everything that fixes the cell grid of one video, apart from the weights and the condition.

    Args:
        times: (t_0, …, t_{K−1}, 0), decreasing, schedule units (see :func:`denoising_times`).
        num_blocks: N, blocks per video.
        frames_per_block: F, latent frames per block.
        window: attention window W in latent frames (None: all earlier frames); caches keep W − F frames.
        sink_frames: S, an attention sink: the video's first S latent frames stay in every cache, counted in
            its W − F frames and shown just before the others (:class:`~fdistill.models.kv_cache.KVCache`);
            0 (default): a plain rolling window. Needs a window with W − F > S.
        context: level of the step-first orders' context: "next" (t_{k+1}) or "same" (t_k).
        renoise: "noise" (x̂0 re-noised with the bank's ε(k, b)) or "ode" (DDIM step from x_b^k).
        fused: prepend each write forward to the next denoise forward on the same cache.
        attention_backend: ``fdistill.kernels`` backend for block-causal attention.
    """

    times: tuple[float, ...]
    num_blocks: int
    frames_per_block: int
    window: int | None = None
    sink_frames: int = 0
    context: str = "next"
    renoise: str = "noise"
    fused: bool = True
    attention_backend: str = "auto"

    def __post_init__(self) -> None:
        t = self.times
        if len(t) < 2 or t[-1] != 0 or any(a <= b for a, b in zip(t, t[1:], strict=False)):
            raise ValueError(f"times must decrease strictly to a final 0, got {t}")
        if self.num_blocks < 1 or self.frames_per_block < 1:
            raise ValueError(f"need num_blocks >= 1 and frames_per_block >= 1, got {self.num_blocks}, "
                             f"{self.frames_per_block}")
        if self.window is not None and self.window < self.frames_per_block:
            raise ValueError(f"window={self.window} is smaller than a block (frames_per_block="
                             f"{self.frames_per_block}): the window must hold at least one whole block")
        check_sink_frames(self.sink_frames, self.window, self.frames_per_block)
        if self.sink_frames and self.fused:
            raise ValueError("an attention sink runs unfused (fused=False): a fused forward reads a cache one "
                             "block behind its queries, whose window would not reach the sink")
        if self.context not in CONTEXTS:
            raise ValueError(f"unknown context {self.context!r}; valid: {', '.join(CONTEXTS)}")
        if self.renoise not in RENOISE_MODES:
            raise ValueError(f"unknown renoise {self.renoise!r}; valid: {', '.join(RENOISE_MODES)}")

    @property
    def num_steps(self) -> int:
        """K."""
        return len(self.times) - 1


def _cell_seed(seed: int, index: int, block: int, *tag: int) -> int:
    """A 63-bit seed for draw ``index`` of ``block``, independent across (index, block, tag)."""
    return int(np.random.SeedSequence([seed, index, block, *tag]).generate_state(1, dtype=np.uint64)[0] >> 1)


class NoiseBank:
    """Seeded Gaussian noise per cell, identical for every order and every process that asks for it.

    ``initial(b)`` is block b's ε at t_0 (or the matching frames of ``latents``); ``renoise(k, b)`` is
    the ε that re-noises cell (k, b)'s x̂0 to t_{k+1}; ``prefix(k, frames)`` the ε that noises a given
    prefix to the level of step k's cache (continuation). Each draw has its own generator seeded by
    (seed, k, b), so nothing is stored and no draw depends on the order of the others.

    Args:
        seed: non-negative integer.
        block_shape: (B, C, F, H, W) of one block.
        latents: optional (B, C, N·F, H, W) initial noise replacing the ``initial`` draws.
    """

    def __init__(self, seed: int, block_shape: Sequence[int], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, latents: Tensor | None = None) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.seed, self.block_shape = int(seed), tuple(block_shape)
        self.device, self.dtype = torch.device(device), dtype
        self.latents = latents

    def _draw(self, index: int, block: int, *tag: int, frames: int | None = None) -> Tensor:
        g = torch.Generator(device=self.device).manual_seed(_cell_seed(self.seed, index, block, *tag))
        shape = self.block_shape if frames is None else (*self.block_shape[:2], frames, *self.block_shape[3:])
        return torch.randn(shape, generator=g, device=self.device).to(self.dtype)

    def initial(self, b: int) -> Tensor:
        if self.latents is None:
            return self._draw(0, b)
        f = self.block_shape[2]
        return self.latents[:, :, b * f : (b + 1) * f].to(self.device, self.dtype)

    def renoise(self, k: int, b: int) -> Tensor:
        return self._draw(k + 1, b)

    def prefix(self, k: int, frames: int) -> Tensor:
        return self._draw(k, 0, 1, frames=frames)


class HiARCells:
    """The N × K cells of one batch of videos and the state that flows between them.

    A schedule calls ``request(k, b)`` for the forward a cell needs, runs it with ``forward`` (one
    forward for a whole list: the wavefront batches different blocks, steps and caches), and hands
    the output to ``finish(k, b, out)``, which re-noises and returns the write forwards to run
    (none when fused). Cell inputs come from the noise bank (k = 0), from ``finish`` of (k − 1, b),
    or from ``put`` (another process); finished blocks go to ``on_block(b, x0)`` or ``outputs``.

    Args:
        model: the causal student.
        schedule: its noise schedule (x̂0 from the output, re-noising, DDIM steps).
        plan: the grid (:class:`HiARPlan`).
        condition: (B, S, D) ``encoder_hidden_states``.
        bank: the noise bank.
        clean_context: one cache of clean outputs read by every step (the sequential order).
        on_block: called with (b, x̂0 (B, C, F, H, W)) when block b is finished; default: kept in
            ``outputs``.
        prefix: optional clean latents (B or 1, C, P, H, W) the video continues. Before its first
            cell reads it, every cache gets the prefix written at the level it holds (clean for
            sequential; t_{k+1} or t_k for step k of the step-first orders, noised with the bank's
            ``prefix(k, P)``), in the forward of that first cell. The prefix ends on a block boundary
            (it takes frames [S − P, S), S = P rounded up to whole blocks) and block b takes frames
            [S + b·F, S + (b + 1)·F), so the blocks keep the grid the student was trained on.
    """

    def __init__(self, model: CausalWanTransformer3DModel, schedule: NoiseSchedule, plan: HiARPlan,
                 condition: Tensor, bank: NoiseBank, *, clean_context: bool = False,
                 on_block: Callable[[int, Tensor], None] | None = None, prefix: Tensor | None = None) -> None:
        self.model, self.schedule, self.plan = model, schedule, plan
        self.condition, self.bank, self.clean_context = condition, bank, clean_context
        self.on_block = on_block
        self.outputs: dict[int, Tensor] = {}
        self.num_forwards = 0  # model calls (a batched wave is one)
        self.frames_processed = 0  # latent frames through the model, per video (the compute, padding aside)
        self._caches: dict[int, KVCache] = {}
        self._pending: dict[int, tuple[Tensor, float, int]] = {}  # cache key -> deferred write (x, t, offset)
        self._inputs: dict[Cell, Tensor] = {}
        self._denoising: dict[Cell, Tensor] = {}
        f = plan.frames_per_block
        if prefix is not None and (prefix.ndim != 5 or prefix.shape[2] < 1):
            raise ValueError(f"prefix must be latents (B, C, P >= 1, H, W), got {tuple(prefix.shape)}")
        self.prefix = prefix
        self.start = 0 if prefix is None else -(-prefix.shape[2] // f) * f  # first generated frame
        self._primed: set[int] = set()  # caches holding the prefix

    # -- state ---------------------------------------------------------------------------
    def _key(self, k: int) -> int:
        return -1 if self.clean_context else k

    def cache(self, k: int) -> KVCache:
        """The cache step k reads (created empty on first use)."""
        key = self._key(k)
        if key not in self._caches:
            # A block's window holds the block itself and W − F earlier frames; only those are cached.
            window, f = self.plan.window, self.plan.frames_per_block
            self._caches[key] = self.model.make_kv_cache(window=None if window is None else max(window - f, 1),
                                                         sink=self.plan.sink_frames)
        return self._caches[key]

    def state_nbytes(self) -> int:
        """Bytes held between cells: caches, deferred writes and cell inputs (not the outputs)."""
        held = [x for x, _, _ in self._pending.values()] + list(self._inputs.values())
        held += list(self._denoising.values())
        return sum(c.nbytes() for c in self._caches.values()) + sum(x.numel() * x.element_size() for x in held)

    def put(self, k: int, b: int, x: Tensor) -> None:
        """Set x_b^k, the input of cell (k, b) (for k > 0; k = 0 comes from the noise bank)."""
        self._inputs[(k, b)] = x

    def take(self, k: int, b: int) -> Tensor:
        """Remove and return x_b^k (k = K: the finished x̂0 of block b, if not given to ``on_block``)."""
        return self.outputs.pop(b) if k == self.plan.num_steps else self._inputs.pop((k, b))

    def _model_t(self, t: float, x: Tensor) -> Tensor:
        """(B, f) model timesteps for time t on the frames of x."""
        value = self.schedule.model_time(torch.tensor(t, dtype=torch.float32))
        return value.to(x.device).expand(x.shape[0], x.shape[2])

    # -- the cell ------------------------------------------------------------------------
    def request(self, k: int, b: int) -> CacheForward:
        """The denoise forward of cell (k, b), with a deferred write on its cache prepended."""
        plan, f = self.plan, self.plan.frames_per_block
        x = self.bank.initial(b) if k == 0 else self._inputs.pop((k, b))
        x = self.schedule.prior(x) if k == 0 and plan.times[0] == self.schedule.t_max else x
        self._denoising[(k, b)] = x
        t = self._model_t(plan.times[k], x)
        # context "same": the denoise input is the level step k reads, so this forward writes it
        writes_itself = not self.clean_context and plan.context == "same" and b + 1 < plan.num_blocks
        forward = CacheForward(x, t, self.start + b * f, self.cache(k), f if writes_itself else 0)
        pending = self._pending.pop(self._key(k), None)
        if pending is None and self.prefix is not None and self._key(k) not in self._primed:
            pending = self._prefix_write(k, x)
        if pending is not None:  # frames just before x: the block-causal mask keeps this forward exact
            px, pt, offset = pending
            forward = CacheForward(torch.cat([px, x], dim=2), torch.cat([self._model_t(pt, px), t], dim=1),
                                  offset, forward.cache, px.shape[2] + forward.write_frames)
        return forward

    def _prefix_write(self, k: int, like: Tensor) -> tuple[Tensor, float, int]:
        """The prefix at the level cache k holds, as a deferred write (x, t, offset)."""
        self._primed.add(self._key(k))
        plan, prefix = self.plan, self.prefix.to(like.device, like.dtype)
        prefix = prefix.expand(like.shape[0], *prefix.shape[1:]) if prefix.shape[0] == 1 else prefix
        level = 0.0 if self.clean_context else plan.times[k + 1] if plan.context == "next" else plan.times[k]
        if level > 0:
            t = torch.tensor(level, dtype=torch.float32, device=like.device).expand(like.shape[0])
            prefix = self.schedule.add_noise(prefix, self.bank.prefix(k, prefix.shape[2]).to(like), t)
        return prefix, level, self.start - prefix.shape[2]

    def finish(self, k: int, b: int, out: Tensor) -> list[CacheForward]:
        """Take cell (k, b)'s model output for its block, (B, C, F, H, W): x̂0, re-noise, write.

        Returns the write forwards still to run (empty when fused or when no later cell reads one).
        """
        plan, times = self.plan, self.plan.times
        x = self._denoising.pop((k, b))
        t = torch.tensor(times[k], dtype=torch.float32, device=x.device).expand(x.shape[0])
        x0 = self.schedule.to_x0(out.to(x.dtype), x, t)
        last = k + 1 == plan.num_steps
        if last:
            x_next = x0
        else:
            t_next = torch.tensor(times[k + 1], dtype=torch.float32, device=x.device).expand(x.shape[0])
            if plan.renoise == "ode":
                x_next = self.schedule.ddim_step(x, x0, t, t_next)
            else:
                x_next = self.schedule.add_noise(x0, self.bank.renoise(k, b), t_next)
        if last and self.on_block is not None:
            self.on_block(b, x0)
        elif last:
            self.outputs[b] = x0
        else:
            self._inputs[(k + 1, b)] = x_next

        writes_after = last if self.clean_context else plan.context == "next"
        if not writes_after or b + 1 == plan.num_blocks:
            return []
        if plan.fused:
            self._pending[self._key(k)] = (x_next, times[k + 1], self.start + b * plan.frames_per_block)
            return []
        return [CacheForward(x_next, self._model_t(times[k + 1], x_next), self.start + b * plan.frames_per_block,
                            self.cache(k), plan.frames_per_block)]

    # -- running forwards ----------------------------------------------------------------
    def forward(self, forwards: Sequence[CacheForward]) -> list[Tensor]:
        """Run forwards as one model call (every order: ``forward_batched``, one group or several) and
        return each one's output for its last F frames (the denoised block; unused for a pure write)."""
        if not forwards:
            return []
        self.num_forwards += 1
        self.frames_processed += sum(fw.x.shape[2] for fw in forwards)
        f, plan = self.plan.frames_per_block, self.plan
        dtype = self.model.dtype  # the grid keeps its latents in float32; the model sees its own dtype
        forwards = [CacheForward(fw.x.to(dtype), fw.t, fw.frame_offset, fw.cache, fw.write_frames) for fw in forwards]
        outs = self.model.forward_batched(forwards, self.condition.to(dtype), frames_per_block=f, window=plan.window,
                                          attention_backend=plan.attention_backend)
        return [out[:, :, -f:] for out in outs]


def cell_waves(order: str, num_blocks: int, num_steps: int) -> list[list[Cell]]:
    """The cells of a single-process order as a list of waves; the cells of a wave share one forward.

    sequential: for b: for k; hierarchical: for k: for b; wavefront: wave s holds all (k, b) with
    k + b = s (N + K − 1 waves). "pipelined" runs in several processes (``hiar_parallel``).
    """
    check_order(order)
    n, K = num_blocks, num_steps
    if order == "sequential":
        return [[(k, b)] for b in range(n) for k in range(K)]
    if order == "hierarchical":
        return [[(k, b)] for k in range(K) for b in range(n)]
    if order == "wavefront":
        return [[(k, s - k) for k in range(K) if 0 <= s - k < n] for s in range(n + K - 1)]
    raise ValueError("order 'pipelined' runs across processes: use fdistill.pipelines.hiar_parallel")


def run_cells(cells: HiARCells, waves: Sequence[Sequence[Cell]], on_cell: Callable[[], None] | None = None) -> None:
    """Run waves of cells in order: each wave's denoise forwards as one forward, then its writes."""
    for wave in waves:
        outs = cells.forward([cells.request(k, b) for k, b in wave])
        writes = []
        for (k, b), out in zip(wave, outs, strict=True):
            writes += cells.finish(k, b, out)
            if on_cell is not None:
                on_cell()
        cells.forward(writes)


@torch.no_grad()
def generate_video(model: CausalWanTransformer3DModel, schedule: NoiseSchedule, plan: HiARPlan, condition: Tensor,
                   bank: NoiseBank, order: str = "hierarchical", on_cell: Callable[[], None] | None = None,
                   on_block: Callable[[int, Tensor], None] | None = None,
                   prefix: Tensor | None = None) -> tuple[Tensor | None, HiARCells]:
    """Generate latents (B, C, N·F, H, W) with a single-process order; returns (video, cells).

    With ``on_block`` the finished blocks go there instead (video is None), so memory stays flat.
    ``prefix``: clean latents (B or 1, C, P, H, W) to continue (see :class:`HiARCells`).
    """
    cells = HiARCells(model, schedule, plan, condition, bank, clean_context=order == "sequential", on_block=on_block,
                      prefix=prefix)
    run_cells(cells, cell_waves(order, plan.num_blocks, plan.num_steps), on_cell)
    if on_block is not None:
        return None, cells
    return torch.cat([cells.outputs[b] for b in range(plan.num_blocks)], dim=2), cells
