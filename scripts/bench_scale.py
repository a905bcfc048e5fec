"""Memory and speed of the ways to train a student at scale, measured on tiny models, priced for real ones.

    python scripts/bench_scale.py [--output reports/scale.json]

1. Tensor bytes held by teacher + student + fake score after one Adam step (weights, gradients, optimiser
   state; unique storages, so weights LoRA views share count once), for the tiny SD3 and Wan denoisers:
   full copies, LoRA (rank 4) on the shared teacher, and FSDP × 2 (per rank, measured in two processes);
   the planner's numbers (``fdistill plan-memory``, no weights) beside each.
2. Seconds per f-distill step on 2 CPU processes, DDP against FSDP, same global batch (the tiny digits
   teacher, medians of the logged steps).
3. The planner's table for the real model sizes on an 80 GB GPU (8 ranks, LoRA rank 64).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch
from torch import nn

from fdistill.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
TINY_UNET = {"sample_size": 16, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16],
             "layers_per_block": 1, "down_block_types": ["DownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "UpBlock2D"], "norm_num_groups": 4, "num_class_embeds": 11}
"""The tests' tiny digits UNet (tests/conftest.py), written out: the README runs this script without tests/."""
TINY_WAN = dict(patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                text_dim=32, freq_dim=32, ffn_dim=64, num_layers=4, rope_max_seq_len=64)


def denoiser(name: str) -> nn.Module:
    import diffusers

    from fdistill.models.tiny_pipelines import tiny_pipeline

    torch.manual_seed(0)
    if name == "wan":
        return diffusers.WanTransformer3DModel(**TINY_WAN)
    return tiny_pipeline(name).transformer


def inputs(name: str, model: nn.Module, batch: int = 2) -> dict:
    if name == "wan":
        return dict(hidden_states=torch.randn(batch, 4, 4, 8, 8), timestep=torch.full((batch,), 500.0),
                    encoder_hidden_states=torch.randn(batch, 8, 32))
    return dict(hidden_states=torch.randn(batch, 16, 8, 8), timestep=torch.full((batch,), 500.0),
                encoder_hidden_states=torch.randn(batch, 272, 64), pooled_projections=torch.randn(batch, 64))


def held_bytes(modules: list[nn.Module], optimizers: list[torch.optim.Optimizer]) -> dict[str, int]:
    """Bytes of the unique storages of weights, gradients and optimiser state (DTensors: the local shard)."""
    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    seen: set[int] = set()

    def count(tensors) -> int:
        total = 0
        for t in tensors:
            t = local(t)
            if t is None or t.untyped_storage().data_ptr() in seen:
                continue
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
        return total

    params = [p for m in modules for p in m.parameters()]
    return {"weights": count(params), "gradients": count(p.grad for p in params if p.grad is not None),
            "optimizer": count(v for o in optimizers for s in o.state.values() for v in s.values()
                               if torch.is_tensor(v) and v.dim() > 0)}


def one_step(name: str, lora_rank: int | None) -> dict[str, int]:
    """Teacher, student and fake score of the tiny ``name`` denoiser after one Adam step of each trained copy."""
    import copy

    from fdistill.lora import add_lora, shared_copy

    teacher = denoiser(name).requires_grad_(False)
    trained = []
    for _ in range(2):  # student, fake score
        if lora_rank is None:
            trained.append(copy.deepcopy(teacher).requires_grad_(True))
        else:
            trained.append(add_lora(shared_copy(teacher), lora_rank))
    optimizers = [torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-4) for m in trained]
    for m, o in zip(trained, optimizers, strict=True):
        m(**inputs(name, m)).sample.pow(2).mean().backward()
        o.step()
    return held_bytes([teacher, *trained], optimizers)


FSDP_WORKER = """
import json, sys, torch, torch.distributed as dist
sys.path.insert(0, {scripts!r})
from bench_scale import denoiser, held_bytes, inputs
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from fdistill.training.fsdp import _blocks
dist.init_process_group("gloo")
mesh = init_device_mesh("cpu", (dist.get_world_size(),))
out = {{}}
for name in ("sd3", "wan"):
    teacher = denoiser(name).requires_grad_(False)
    trained = [denoiser(name) for _ in range(2)]
    for m in trained:
        for block in _blocks(m):
            fully_shard(block, mesh=mesh)
        fully_shard(m, mesh=mesh)
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-4) for m in trained]
    for m, o in zip(trained, optimizers):
        m(**inputs(name, m, batch=1)).sample.pow(2).mean().backward()
        o.step()
    out[name] = held_bytes([teacher, *trained], optimizers)
if dist.get_rank() == 0:
    print("RESULT" + json.dumps(out))
dist.destroy_process_group()
"""


def torchrun(script: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), *args], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    if res.returncode:
        raise RuntimeError(res.stderr[-3000:])
    return res


def fsdp_bytes() -> dict[str, dict[str, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "worker.py"
        script.write_text(FSDP_WORKER.format(scripts=str(ROOT / "scripts")))
        line = next(ln for ln in torchrun(script).stdout.splitlines() if ln.startswith("RESULT"))
        return json.loads(line[len("RESULT"):])


def step_times(work: Path, steps: int) -> dict[str, float]:
    """Median seconds per f-distill step of the tiny digits student, DDP and FSDP on 2 processes."""
    from fdistill.training.config import build
    from fdistill.training.teacher import TeacherConfig, train_teacher

    teacher = train_teacher(build(TeacherConfig, {
        "model": {"kind": "unet2d", "config": TINY_UNET}, "data": {"name": "digits", "kwargs": {"split": "train"}},
        "batch_size": 8, "steps": 2, "checkpoint_every": 100, "output_dir": str(work / "teacher"), "progress": False}))
    times = {}
    for parallel in ("ddp", "fsdp"):
        out = work / parallel
        script = work / f"{parallel}.py"
        cfg = {"teacher": {"path": str(teacher)}, "warmup": {"steps": 0}, "steps": steps, "batch_size": 16,
               "critic_steps": 2, "log_every": 1, "checkpoint_every": 1000, "export": False, "progress": False,
               "output_dir": str(out), "parallel": parallel}
        script.write_text(textwrap.dedent(f"""
            from fdistill.training.config import build
            from fdistill.training.distill import DistillConfig, distill
            from fdistill.training.distributed import end_process_group
            distill(build(DistillConfig, {cfg!r}))
            end_process_group()
        """))
        torchrun(script)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]  # first: start-up
        times[parallel] = statistics.median(r["sec_per_step"] for r in rows)
    return times


def main() -> None:
    from fdistill.lora import lora_parameter_count
    from fdistill.memory import GIB, KNOWN_MODELS, count_parameters, denoiser_on_meta, plan_memory

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="reports/scale.json")
    parser.add_argument("--steps", type=int, default=12, help="f-distill steps per timed run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    report: dict = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                    "tiny": {}, "planner_80gb": {}}
    sharded = fsdp_bytes()
    for name in ("sd3", "wan"):
        model = denoiser(name)
        n, lora = count_parameters(model), lora_parameter_count(model, 4)
        rows = {r.strategy: r for r in plan_memory(model, ranks=2, lora_rank=4)}
        measured = {"full": one_step(name, None), "LoRA r=4": one_step(name, 4), "full, FSDP × 2 (per rank)":
                    sharded[name]}
        report["tiny"][name] = {
            "parameters": n, "lora_parameters": lora,
            "measured_bytes": {k: {**v, "total": sum(v.values())} for k, v in measured.items()},
            "planner_bytes": {"full": rows["full"].as_dict(), "LoRA r=4": rows["LoRA r=4, fp32 base"].as_dict(),
                              "full, FSDP × 2 (per rank)": rows["full, FSDP × 2"].as_dict()}}
        print(name, json.dumps(report["tiny"][name]["measured_bytes"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        report["seconds_per_step_2_cpu_processes"] = step_times(Path(tmp), args.steps)
    print(report["seconds_per_step_2_cpu_processes"], flush=True)
    for name in KNOWN_MODELS:
        what, model = denoiser_on_meta(name)
        report["planner_80gb"][name] = {"parameters": count_parameters(model),
                                         "rows": [r.as_dict(80 * GIB) for r in plan_memory(model, 8, 64)]}
    atomic_write_text(args.output, json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
