"""The Accelerator every trainer uses (gradients are averaged by accelerate's DDP/FSDP wrappers)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def make_accelerator(mixed_precision: str = "no", timeout_s: float | None = None, **kwargs):
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
    if timeout_s is not None:  # how long a collective waits for a rank that may have died
        from datetime import timedelta

        from accelerate.utils import InitProcessGroupKwargs

        kwargs.setdefault("kwargs_handlers", []).append(InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s)))
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available(), **kwargs)


def end_process_group(*, success: bool = True) -> None:
    """Destroy the default process group, if one was started, before the interpreter exits.

    Call it once at the end of a script that trains under ``torchrun`` / ``accelerate launch`` (the
    ``fdistill`` command does). A gloo group left to the interpreter's shutdown sometimes aborts a rank
    that has finished its work ("terminate called without an active exception": 2 runs in 52 of two
    CPU processes here), which fails a finished job. After a successful run the ranks first meet at a
    barrier; after an error they do not, since the other ranks may never arrive.
    """
    if not dist.is_available() or not dist.is_initialized():
        return
    if success:
        dist.barrier()
    dist.destroy_process_group()
