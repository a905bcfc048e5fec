"""FSDP2 for the trainer (``parallel=fsdp``): every trained module sharded over the ranks with torch's own
``fully_shard``, checkpoints sharded with ``torch.distributed.checkpoint``.

accelerate turns its FSDP plugin on only on accelerators; torch's FSDP2 runs on a CPU device mesh over
gloo as well as on GPUs over NCCL, so the same code is what the CPU tests check and what a GPU job runs.

* Sharding: each child of a module list of blocks (``transformer_blocks``, ``down_blocks``, ``blocks``, …)
  is one FSDP unit, then the module itself (its remaining parameters). Optimisers are rebuilt over the
  sharded parameters with their settings. ``mixed_precision=bf16`` computes in bf16 and reduces gradients
  in fp32 (``MixedPrecisionPolicy``); the stored (sharded) parameters stay fp32.
* The frozen teacher is not sharded: it stays whole on every rank, in its own dtype (load it in bf16 to
  halve it). Its forward needs no communication, and LoRA students that share it are not supported under
  FSDP.
* Checkpoints: each rank writes its shards of the modules, their optimiser states and the EMA weights
  (``dcp.save``); small replicated states (the ratio normaliser, LR schedulers, the step) are written by
  rank 0 beside them. A resumed run continues bit for bit.
* Export: the full EMA weights are gathered on every rank and the method's ``finish`` runs on rank 0 over
  plain (unsharded) copies of the trained modules.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["FSDPEngine"]


def _blocks(module: nn.Module) -> list[nn.Module]:
    """The FSDP units inside ``module``: the blocks of its outermost module lists of two or more parameterised
    blocks (``down_blocks.0``, not also its ``resnets.0``: a unit's parameters belong to it alone)."""
    units = []
    for child in module.children():
        blocks = [b for b in child if any(True for _ in b.parameters())] if isinstance(child, nn.ModuleList) else []
        units += blocks if len(blocks) > 1 else _blocks(child)
    return units


def _meta_template(module: nn.Module) -> nn.Module:
    """A copy of ``module``'s structure with its tensors on the meta device (no memory): what the gathered full
    weights are loaded into for the export."""
    memo = {}
    for t in [*module.parameters(), *module.buffers()]:
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(module, memo)


class FSDPEngine:
    """What the trainer asks of its parallel engine, for FSDP2 (see the module docstring)."""

    def __init__(self, accelerator, mixed_precision: str):
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy

        if not dist.is_initialized():
            raise ValueError("parallel=fsdp needs several processes: launch with torchrun (e.g. torchrun "
                             "--standalone --nproc_per_node 2 -m fdistill.cli distill parallel=fsdp ...)")
        self.accelerator = accelerator
        self.mesh = init_device_mesh(accelerator.device.type, (dist.get_world_size(),))
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
        self.policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else \
            MixedPrecisionPolicy()
        self.templates: dict[str, nn.Module] = {}

    def prepare(self, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]):
        """Shard ``modules`` in place and rebuild ``optimizers`` over the sharded parameters."""
        from torch.distributed.fsdp import fully_shard

        names = {id(p): (m, n) for m, module in modules.items() for n, p in module.named_parameters()}
        shared = self._sharing(modules)
        if shared:
            raise ValueError(f"parallel=fsdp shards each trained network on its own; {shared} share weights "
                             "(LoRA views of the teacher): use parallel=ddp with LoRA")
        groups = {k: [[names[id(p)] for p in g["params"]] for g in o.param_groups] for k, o in optimizers.items()}
        for name, module in modules.items():
            self.templates[name] = _meta_template(module)
            module.to(self.accelerator.device)
            for block in _blocks(module):
                fully_shard(block, mesh=self.mesh, mp_policy=self.policy)
            fully_shard(module, mesh=self.mesh, mp_policy=self.policy)
        params = {(m, n): p for m, module in modules.items() for n, p in module.named_parameters()}
        rebuilt = {}
        for k, o in optimizers.items():
            new_groups = [{**{key: v for key, v in g.items() if key != "params"},
                           "params": [params[ref] for ref in refs]} for g, refs in zip(o.param_groups, groups[k],
                                                                                        strict=True)]
            rebuilt[k] = type(o)(new_groups, **o.defaults)
        return modules, rebuilt

    @staticmethod
    def _sharing(modules: dict[str, nn.Module]) -> list[str]:
        """The names of the modules that hold a parameter another one holds too."""
        owners: dict[int, set[str]] = {}
        for name, module in modules.items():
            for p in module.parameters():
                owners.setdefault(id(p), set()).add(name)
        return sorted({n for names in owners.values() if len(names) > 1 for n in names})

    def unwrap(self, module: nn.Module) -> nn.Module:
        return module

    def settle(self, modules: dict[str, nn.Module]) -> None:
        """Reshard every module: a forward without backward (the student's samples for the critic) leaves the
        root's parameters gathered, and the optimiser and the EMA must see the sharded ones."""
        for module in modules.values():
            module.reshard()

    @contextlib.contextmanager
    def no_sync(self, module: nn.Module) -> Iterator[None]:
        """Accumulate gradients locally (no reduce-scatter) for the micro-batches before the last."""
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, params: list[nn.Parameter], max_norm: float) -> Tensor:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    # -- checkpoints ------------------------------------------------------------------------------
    def _sharded_state(self, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                       ema: dict[str, Any]) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        state: dict[str, Any] = {f"module.{k}": get_model_state_dict(m) for k, m in modules.items()}
        everything = nn.ModuleDict(modules)
        for k, o in optimizers.items():
            state[f"optimizer.{k}"] = get_optimizer_state_dict(everything, o)
        for k, e in ema.items():
            state[f"ema.{k}"] = {str(i): p for i, p in enumerate(e.shadow_params)}
        return state

    def save(self, folder: Path, modules, optimizers, ema) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.save(self._sharded_state(modules, optimizers, ema), checkpoint_id=str(folder / "sharded"))

    def load(self, folder: Path, modules, optimizers, ema) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        state = self._sharded_state(modules, optimizers, ema)
        dcp.load(state, checkpoint_id=str(folder / "sharded"))
        everything = nn.ModuleDict(modules)
        for k, m in modules.items():
            set_model_state_dict(m, state[f"module.{k}"])
        for k, o in optimizers.items():
            set_optimizer_state_dict(everything, o, state[f"optimizer.{k}"])
        for k, e in ema.items():
            for i, p in enumerate(e.shadow_params):
                p.copy_(state[f"ema.{k}"][str(i)])

    # -- export -----------------------------------------------------------------------------------
    def gather(self, modules: dict[str, nn.Module], ema: dict[str, Any]) -> tuple[dict[str, nn.Module], dict]:
        """(plain full copies of ``modules`` on rank 0, EMA objects over full tensors): a collective every rank
        joins; what the method's ``finish`` reads on rank 0 (the other ranks keep their shards)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # the full tensors land on rank 0
        full = {}
        for name, module in modules.items():
            state = get_model_state_dict(module, options=options)
            if not self.accelerator.is_main_process:
                full[name] = module
                continue
            plain = self.templates[name].to_empty(device="cpu")
            plain.load_state_dict(state)
            full[name] = plain
        gathered = {}
        for name, e in ema.items():
            e.shadow_params = [p.full_tensor().cpu() if hasattr(p, "full_tensor") else p.cpu()
                               for p in e.shadow_params]
            gathered[name] = e
        return full, gathered
