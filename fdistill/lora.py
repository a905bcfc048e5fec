"""Which layers of a diffusion network carry LoRA adapters, and how many parameters those adapters hold.

The targets are the attention projections diffusers' own LoRA training scripts adapt (queries, keys,
values, outputs, and the text stream's ``add_*`` projections of MMDiT / Flux blocks); a rank-r adapter
on ``nn.Linear(d_in, d_out)`` holds r·(d_in + d_out) parameters (A: r×d_in, B: d_out×r).
"""

from __future__ import annotations

from torch import nn

__all__ = ["LORA_TARGETS", "add_lora", "lora_parameter_count", "lora_state_dict", "lora_target_modules", "merged_copy",
           "shared_copy"]

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
"""Module-name suffixes of the adapted linear layers (peft's ``target_modules`` matches them by suffix)."""


def lora_target_modules(model: nn.Module, targets: tuple[str, ...] = LORA_TARGETS) -> list[str]:
    """Names of the ``nn.Linear`` modules of ``model`` whose name ends in one of ``targets``."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)]


def lora_parameter_count(model: nn.Module, rank: int, targets: tuple[str, ...] = LORA_TARGETS) -> int:
    """Parameters of rank-``rank`` LoRA adapters on the ``targets`` of ``model`` (works on the meta device)."""
    modules = dict(model.named_modules())
    return sum(rank * (modules[n].in_features + modules[n].out_features) for n in lora_target_modules(model, targets))


def shared_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s module tree whose parameters and buffers are ``model``'s own tensors (no new memory):
    a second view of a frozen base, into which adapters can be put without touching the original."""
    import copy

    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo)


def add_lora(model: nn.Module, rank: int, alpha: float | None = None,
             targets: tuple[str, ...] = LORA_TARGETS) -> nn.Module:
    """Put a rank-``rank`` LoRA adapter (scale ``alpha / rank``, default 1) on the ``targets`` of the diffusers
    model ``model``, in place, through diffusers' own ``add_adapter`` (peft). B starts at zero, so the adapted
    model starts equal to ``model``. Only the adapter's parameters require gradients."""
    from peft import LoraConfig, inject_adapter_in_model

    modules = lora_target_modules(model, targets)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no linear layer named like {', '.join(targets)}: nothing to adapt")
    model.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=modules, init_lora_weights=True)
    if hasattr(model, "add_adapter"):  # diffusers' models with peft support keep track of their adapters
        model.add_adapter(config)
    else:  # DiT, PixArt: peft's own injection, the same layers
        inject_adapter_in_model(config, model)
    return model


def merged_copy(base: nn.Module, adapted: nn.Module) -> nn.Module:
    """A full copy of ``base`` with the LoRA deltas of ``adapted`` (a :func:`shared_copy` of it with adapters)
    added to its weights: the adapted model as one plain diffusers model, for a stock pipeline."""
    import copy

    import torch
    from peft.tuners.lora import LoraLayer

    merged = copy.deepcopy(base).requires_grad_(False)
    with torch.no_grad():
        for name, module in adapted.named_modules():
            if isinstance(module, LoraLayer):
                target = merged.get_submodule(name)
                for adapter in module.active_adapters:
                    target.weight += module.get_delta_weight(adapter).to(target.weight)
    return merged


def lora_state_dict(adapted: nn.Module) -> dict:
    """The adapter weights of ``adapted`` (``...lora_A.weight`` / ``...lora_B.weight`` per adapted layer), as
    diffusers' ``save_lora_weights`` takes them and ``load_lora_weights`` reads them back."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(adapted).items()}
