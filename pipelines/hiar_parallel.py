"""Pipelined-parallel HiAR: rank r owns a run of denoising steps and their KV caches.

With P = K processes, rank k runs the cells (k, 0), (k, 1), … of step k against its own cache and
sends each block's re-noised latent x_b^{k+1} to rank k + 1 by point-to-point ``isend``/``recv``;
rank 0 reads the initial noise from the shared :class:`~fdistill.models.hiar_cell.NoiseBank`, the last rank
collects the finished blocks. Every rank draws the re-noising ε(k, b) from the same bank, so the
video equals the single-process hierarchical (and wavefront) one. After a fill of K − 1 slots all
ranks work at once: N·K cells in N + K − 1 slots, an ideal speedup of N·K / (N + K − 1). With
P < K processes each rank owns a contiguous run of steps.

Two ways to launch:

- ``generate_video_pipelined(model, …, num_processes=P)`` starts P local processes (from a fork
  server on CPU, which pays the imports once per session; spawned, one GPU per rank, on CUDA) and
  returns the video. Weights travel through shared memory.
- under ``torchrun`` (a process group already initialised), ``generate_video_in_group`` runs this
  rank's share and broadcasts the video to every rank.

Backends: gloo on CPU, NCCL on CUDA (one device per rank: ``cuda:<local rank>``).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from fdistill.models.causal_wan import CausalWanTransformer3DModel
from fdistill.models.hiar_cell import HiARCells, HiARPlan, NoiseBank
from fdistill.schedules import NoiseSchedule

__all__ = ["generate_video_in_group", "generate_video_pipelined", "ideal_speedup", "steps_of_rank"]


def ideal_speedup(num_blocks: int, num_steps: int) -> float:
    """N·K / (N + K − 1): the pipelined schedule's speedup over one process when cells cost the same."""
    return num_blocks * num_steps / (num_blocks + num_steps - 1)


def steps_of_rank(rank: int, world_size: int, num_steps: int) -> range:
    """The contiguous run of steps rank ``rank`` of ``world_size`` owns (sizes differ by at most one)."""
    if not 1 <= world_size <= num_steps:
        raise ValueError(f"the pipelined order needs 1 <= processes <= K = {num_steps} steps, got {world_size}")
    bounds = [round(i * num_steps / world_size) for i in range(world_size + 1)]
    return range(bounds[rank], bounds[rank + 1])


def run_rank(cells: HiARCells, rank: int, world_size: int, on_block: Callable[[int, Tensor], None],
             on_cell: Callable[[], None] | None = None) -> None:
    """This rank's cells, block by block; finished blocks (last rank only) go to ``on_block``.

    Receives x_b^{k} for its first step k from rank − 1 (rank 0: the noise bank), runs its steps
    on block b, sends x_b^{k'+1} of its last step k' to rank + 1.
    """
    plan = cells.plan
    steps = steps_of_rank(rank, world_size, plan.num_steps)
    shape, device, dtype = cells.bank.block_shape, cells.bank.device, cells.bank.dtype
    in_flight: list[tuple[dist.Work, Tensor]] = []
    for b in range(plan.num_blocks):
        if steps.start > 0:
            x = torch.empty(shape, device=device, dtype=dtype)
            dist.recv(x, src=rank - 1)
            cells.put(steps.start, b, x)
        for k in steps:
            (out,) = cells.forward([cells.request(k, b)])
            cells.forward(cells.finish(k, b, out))
            if on_cell is not None:
                on_cell()
        x_next = cells.take(steps.stop, b)
        if steps.stop == plan.num_steps:
            on_block(b, x_next)
        else:
            x_next = x_next.contiguous()
            in_flight.append((dist.isend(x_next, dst=rank + 1), x_next))
            in_flight = [(w, t) for w, t in in_flight if not w.is_completed()]
    for work, _ in in_flight:
        work.wait()


def _device_for(backend: str, local_rank: int) -> torch.device:
    return torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")


def _worker(rank: int, world_size: int, address: str, backend: str, threads: int,
            model: CausalWanTransformer3DModel, schedule: NoiseSchedule, plan: HiARPlan, condition: Tensor,
            bank: NoiseBank, video: Tensor, stats: Tensor, prefix: Tensor | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    device = _device_for(backend, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=address, rank=rank, world_size=world_size,
                            timeout=timedelta(minutes=10))
    try:
        model = model.to(device)
        bank = NoiseBank(bank.seed, bank.block_shape, device, bank.dtype, bank.latents)
        cells = HiARCells(model, schedule, plan, condition.to(device), bank,
                          prefix=None if prefix is None else prefix.to(device))
        f = plan.frames_per_block

        def store(b: int, x0: Tensor) -> None:
            video[:, :, b * f : (b + 1) * f] = x0.cpu()

        dist.barrier()
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.no_grad():
            run_rank(cells, rank, world_size, store)
        stats[rank] = torch.tensor([time.perf_counter() - start, time.process_time() - cpu_start, cells.num_forwards])
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def generate_video_pipelined(model: CausalWanTransformer3DModel, schedule: NoiseSchedule, plan: HiARPlan,
                             condition: Tensor, bank: NoiseBank, num_processes: int | None = None, *,
                             threads_per_process: int | None = None, timing: dict | None = None,
                             prefix: Tensor | None = None) -> Tensor:
    """Generate latents (B, C, N·F, H, W) with ``num_processes`` local processes (default K).

    ``prefix``: clean latents (B or 1, C, P, H, W) the video continues; each rank writes it into
    the caches of its own steps (see :class:`~fdistill.models.hiar_cell.HiARCells`).

    CPU models run on gloo in processes forked from a fork server (``threads_per_process`` torch threads each; default
    cores // processes); CUDA models on NCCL in spawned processes, rank r on ``cuda:r`` (needs as
    many GPUs as processes). ``timing``, when given, receives ``total_s`` (including process start),
    ``compute_s`` (slowest rank, between barriers after start-up), and per rank ``cpu_s`` (CPU time of
    that span: below compute_s when the rank waits or the cores are shared) and ``forwards``.
    """
    world = plan.num_steps if num_processes is None else num_processes
    steps_of_rank(0, world, plan.num_steps)  # validates world
    cuda = next(model.parameters()).is_cuda
    if cuda and world > torch.cuda.device_count():
        raise ValueError(f"the pipelined order on CUDA needs one GPU per process: {world} processes, "
                         f"{torch.cuda.device_count()} GPUs")
    backend = "nccl" if cuda else "gloo"
    threads = threads_per_process or (0 if cuda else max(1, (os.cpu_count() or 1) // world))
    b, c, f, h, w = bank.block_shape
    video = torch.zeros(b, c, plan.num_blocks * f, h, w, dtype=bank.dtype).share_memory_()
    stats = torch.zeros(world, 3, dtype=torch.float64).share_memory_()
    start_method = "spawn" if cuda or "forkserver" not in mp.get_all_start_methods() else "forkserver"
    if start_method == "forkserver":
        # The fork server imports this module once; its forks skip the imports (seconds each) and,
        # unlike plain fork, do not inherit the caller's OpenMP pool (a forked pool deadlocks).
        mp.get_context("forkserver").set_forkserver_preload([__name__])
    start = time.perf_counter()
    mp.start_processes(
        _worker, args=(world, _free_address(), backend, threads, model, schedule, plan, condition, bank, video, stats,
                                None if prefix is None else prefix.cpu()),
        nprocs=world, join=True, start_method=start_method,
    )
    if timing is not None:
        timing.update(total_s=time.perf_counter() - start, compute_s=float(stats[:, 0].max()),
                      cpu_s=stats[:, 1].tolist(), forwards=[int(n) for n in stats[:, 2]])
    return video.to(bank.device)


def generate_video_in_group(model: CausalWanTransformer3DModel, schedule: NoiseSchedule, plan: HiARPlan,
                            condition: Tensor, bank: NoiseBank,
                            on_cell: Callable[[], None] | None = None, prefix: Tensor | None = None) -> Tensor:
    """This rank's share of the pipelined order inside an initialised process group (torchrun);
    every rank returns the whole video (broadcast from the last rank). ``prefix``: as
    :func:`generate_video_pipelined`."""
    rank, world = dist.get_rank(), dist.get_world_size()
    steps_of_rank(rank, world, plan.num_steps)
    b, c, f, h, w = bank.block_shape
    video = torch.zeros(b, c, plan.num_blocks * f, h, w, device=bank.device, dtype=bank.dtype)

    def store(block: int, x0: Tensor) -> None:
        video[:, :, block * f : (block + 1) * f] = x0

    cells = HiARCells(model, schedule, plan, condition, bank, prefix=prefix)
    with torch.no_grad():
        run_rank(cells, rank, world, store, on_cell)
    dist.broadcast(video, src=world - 1)
    return video
