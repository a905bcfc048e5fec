"""The Accelerator every trainer uses (gradients are averaged by accelerate's DDP/FSDP wrappers)."""

from __future__ import annotations

import torch


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
