"""Gradient averaging across processes without DDP wrappers."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sync_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average ``.grad`` of ``params`` over all ranks in one flat all-reduce (no-op for one process).

    Parameters without a gradient on this rank contribute zeros, so every rank steps identically.
    """
    n = world_size()
    if n == 1:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= n
    offset = 0
    for p in params:
        k = p.numel()
        p.grad.copy_(flat[offset:offset + k].view_as(p.grad))
        offset += k


@torch.no_grad()
def assert_replicas_agree(params: Iterable[nn.Parameter], what: str = "parameters") -> None:
    """Raise if the ranks' copies of ``params`` differ (a cheap checksum, all-gathered)."""
    n = world_size()
    if n == 1:
        return
    params = list(params)
    device = params[0].device if params else torch.device("cpu")
    checksum = torch.stack([sum((p.double() * (i + 1)).sum() for i, p in enumerate(params))]).to(device)
    gathered = [torch.zeros_like(checksum) for _ in range(n)]
    dist.all_gather(gathered, checksum)
    values = torch.cat(gathered)
    if not torch.allclose(values, values[0].expand_as(values), rtol=1e-9, atol=0.0):
        raise RuntimeError(f"{what} diverged across ranks: checksums {values.tolist()}")


def make_accelerator(mixed_precision: str = "no", **kwargs):
    """An ``Accelerator`` that works on CPU-only machines under torchrun and can be rebuilt in-process.

    accelerate keeps one global state: a second trainer in the same process (a notebook, a sweep)
    with another ``mixed_precision`` would be refused, so that part of the state is reset (the
    process group is kept). Without ``cpu=True`` accelerate treats a torchrun launch on a CPU-only
    machine as a single process.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available(), **kwargs)
