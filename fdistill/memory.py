"""How much memory one-step distillation holds per rank, before any activation: a planner.

Distillation holds three copies of the denoiser: the frozen teacher, the trained student and the trained
fake score. Per parameter, a frozen copy holds its weight; a trained copy holds its weight, its gradient and
Adam's two moments. The planner counts the denoiser's parameters from its config on the meta device (no
weights, no memory) and prices each way of training it:

* ``full``: three full copies, trained ones in fp32 (4 B weight + 4 B gradient + 8 B Adam);
* ``bf16 teacher``: the same with the frozen teacher in bf16 (2 B);
* ``LoRA r``: one frozen base (fp32 or bf16) shared by teacher, student and fake score, plus two rank-r
  adapters (:mod:`fdistill.lora`) trained in fp32;
* ``FSDP × N`` (``parallel=fsdp``, ``torch.distributed.fsdp.fully_shard``): the student and the fake score
  sharded over N ranks, their gradients and Adam state with them; the frozen teacher is not sharded, each rank
  holds it whole (fp32 or bf16), as fdistill's FSDP does. LoRA adapters are views on the shared teacher and
  train under DDP, which holds everything on every rank, so LoRA has no FSDP rows.

Activations, the VAE, the text encoders and the discriminator head are not counted: they depend on the
batch, the resolution and gradient checkpointing, and come on top.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from .lora import lora_parameter_count

__all__ = ["KNOWN_MODELS", "MemoryRow", "count_parameters", "denoiser_on_meta", "plan_memory"]

CONFIGS = Path(__file__).parent / "assets" / "model_configs"
KNOWN_MODELS = tuple(sorted(p.stem for p in CONFIGS.glob("*.json")))
"""Denoisers whose configs ship with fdistill (config files only, no weights)."""

GIB = 1024**3
FP32, BF16, ADAM = 4, 2, 8  # bytes per parameter: fp32 weight or gradient, bf16 weight, Adam's two fp32 moments


@dataclass
class MemoryRow:
    """One way of training: bytes per rank of weights, gradients and optimiser state, and whether it fits."""

    strategy: str
    ranks: int
    weights: int
    gradients: int
    optimizer: int
    trained_parameters: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer

    def as_dict(self, gpu_bytes: int | None = None) -> dict:
        out = {**asdict(self), "total": self.total}
        if gpu_bytes is not None:
            out["fits"] = self.total <= gpu_bytes
        return out


def denoiser_on_meta(teacher: str | Path) -> tuple[str, nn.Module]:
    """(description, the denoiser built on the meta device) for a known name or a diffusers pipeline folder."""
    import diffusers
    from accelerate import init_empty_weights

    if str(teacher) in KNOWN_MODELS:
        record = json.loads((CONFIGS / f"{teacher}.json").read_text())
        cls_name, config, what = record["class"], record["config"], f"{teacher} ({record['source']})"
    else:
        root = Path(teacher)
        if not root.is_dir():
            raise ValueError(f"--teacher {str(teacher)!r} is neither a pipeline folder nor a known model; known: "
                             f"{', '.join(KNOWN_MODELS)}")
        sub = next((s for s in ("transformer", "unet") if (root / s / "config.json").is_file()), None)
        if sub is None:
            raise ValueError(f"{root} has no transformer/config.json or unet/config.json: not a diffusion pipeline folder")
        config = json.loads((root / sub / "config.json").read_text())
        cls_name, what = config["_class_name"], f"{root}/{sub} ({config['_class_name']})"
    with init_empty_weights():
        model = getattr(diffusers, cls_name).from_config(config)
    return what, model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def plan_memory(model: nn.Module, ranks: int = 8, lora_rank: int = 64) -> list[MemoryRow]:
    """Bytes per rank of each strategy, on 1 rank and sharded over ``ranks`` (see the module docstring)."""
    n = count_parameters(model)
    lora = lora_parameter_count(model, lora_rank)
    rows = []
    for r in sorted({1, ranks}):
        fsdp = "" if r == 1 else f", FSDP × {r}"
        rows += [  # the teacher whole on every rank, the two trained copies sharded
            MemoryRow(f"full{fsdp}", r, n * FP32 + 2 * n * FP32 // r, 2 * n * FP32 // r, 2 * n * ADAM // r, 2 * n),
            MemoryRow(f"full, bf16 teacher{fsdp}", r, n * BF16 + 2 * n * FP32 // r, 2 * n * FP32 // r,
                      2 * n * ADAM // r, 2 * n),
        ]
    rows += [
        MemoryRow(f"LoRA r={lora_rank}, fp32 base", 1, n * FP32 + 2 * lora * FP32, 2 * lora * FP32,
                  2 * lora * ADAM, 2 * lora),
        MemoryRow(f"LoRA r={lora_rank}, bf16 base", 1, n * BF16 + 2 * lora * FP32, 2 * lora * FP32,
                  2 * lora * ADAM, 2 * lora),
    ]
    return rows


def format_plan(what: str, parameters: int, rows: list[MemoryRow], gpu_gib: float) -> str:
    lines = [f"{what}: {parameters / 1e9:.3f} B parameters per copy (teacher, student, fake score)",
             f"{'strategy':<36} {'weights':>9} {'grads':>9} {'Adam':>9} {'total/rank':>11}  fits {gpu_gib:g} GiB",
             ]
    for row in rows:
        fits = "yes" if row.total <= gpu_gib * GIB else "no"
        lines.append(f"{row.strategy:<36} {row.weights / GIB:>8.1f}G {row.gradients / GIB:>8.1f}G "
                     f"{row.optimizer / GIB:>8.1f}G {row.total / GIB:>10.1f}G  {fits}")
    lines.append("(GiB per rank before activations, VAE, text encoders and the discriminator head)")
    return "\n".join(lines)
