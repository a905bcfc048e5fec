"""Read a stock diffusers Wan2.1 folder (``WanPipeline``'s layout) as a :class:`HiARPipeline`.

A Wan folder's ``model_index.json`` names ``WanTransformer3DModel`` and the scheduler Wan ships
(``UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=…)``,
or a ``FlowMatchEulerDiscreteScheduler``). ``HiARPipeline.from_pretrained`` passes two components
in their place:

- ``transformer``: the same weights and config loaded as
  :class:`~fdistill.models.causal_wan.CausalWanTransformer3DModel` (a subclass of Wan's);
- ``scheduler``: ``FlowMatchEulerDiscreteScheduler`` with the folder scheduler's shift
  (``schedule_from_scheduler``): the same noise levels, stepped by HiAR's own few-step sampler.

The vae, text encoder and tokenizer load as diffusers loads them. What HiAR has no use for is
dropped with a warning: ``transformer_2`` (Wan2.2's low-noise expert), ``boundary_ratio`` (when
Wan2.2 switches to it) and ``expand_timesteps`` (Wan2.2 TI2V's per-token timesteps). HiAR's own
settings (``denoising_steps``, ``frames_per_block``, …) are not in a Wan folder: they take their
defaults unless given to ``from_pretrained`` as keyword arguments.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

__all__ = ["WAN_PIPELINES", "wan_components"]

WAN_PIPELINES = ("WanPipeline",)
"""``_class_name`` values in ``model_index.json`` of the folders read here."""

# keyword arguments of diffusers' pipeline from_pretrained that also apply to loading the transformer alone
_MODEL_LOADING_KWARGS = ("torch_dtype", "dtype", "variant", "use_safetensors", "low_cpu_mem_usage")


def _dropped(index: dict[str, Any]) -> list[str]:
    """The WanPipeline settings in ``index`` that carry something HiAR drops."""
    dropped = []
    if (index.get("transformer_2") or [None])[0] is not None:
        dropped.append("transformer_2 (Wan2.2's low-noise expert: every step uses transformer)")
    if index.get("boundary_ratio") is not None:
        dropped.append(f"boundary_ratio={index['boundary_ratio']}")
    if index.get("expand_timesteps"):
        dropped.append("expand_timesteps=True (HiAR gives each latent frame one timestep)")
    return dropped


def wan_components(path: str | os.PathLike, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for ``path``: for a Wan folder, ``kwargs`` plus the
    causal ``transformer`` and a flow-matching ``scheduler`` (components passed in ``kwargs`` are
    kept); for any other folder (a saved HiARPipeline, a hub id), ``kwargs`` unchanged.

    Raises ValueError for other Wan pipelines (image-to-video, VACE, …), a Wan folder without
    ``transformer`` or with a scheduler that is not flow matching; warns about what it drops (see
    the module docstring).
    """
    root = Path(path)
    index_path = root / "model_index.json"
    if not index_path.is_file():
        return kwargs
    index = json.loads(index_path.read_text())
    name = str(index.get("_class_name"))
    if name.startswith("Wan") and name not in WAN_PIPELINES:
        raise ValueError(f"{root} is a {name} folder: HiARPipeline reads text-to-video "
                         f"{', '.join(WAN_PIPELINES)} folders (Wan2.1 layout)")
    if name not in WAN_PIPELINES:
        return kwargs
    if (index.get("transformer") or [None])[0] is None:
        raise ValueError(f"{root} has no 'transformer' (only transformer_2?): HiARPipeline needs Wan's transformer")
    dropped = _dropped(index)
    if dropped:
        warnings.warn(f"{root} is a {name} folder; HiARPipeline drops: {'; '.join(dropped)}",
                      stacklevel=3)
    kwargs = dict(kwargs)
    if "scheduler" not in kwargs:
        kwargs["scheduler"] = _flow_scheduler(root, index)
    if "transformer" not in kwargs:
        from fdistill.models.causal_wan import CausalWanTransformer3DModel

        load = {k: kwargs[k] for k in _MODEL_LOADING_KWARGS if k in kwargs}
        for key in ("torch_dtype", "dtype"):  # a pipeline's dtype may be a dict per component
            if isinstance(load.get(key), dict):
                load[key] = load[key].get("transformer", load[key].get("default"))
        kwargs["transformer"] = CausalWanTransformer3DModel.from_pretrained(root, subfolder="transformer", **load)
    return kwargs


def _flow_scheduler(root: Path, index: dict[str, Any]):
    """The folder's scheduler as a ``FlowMatchEulerDiscreteScheduler`` with the same shift."""
    import diffusers

    from fdistill.schedules import FlowMatchingSchedule, schedule_from_scheduler, scheduler_for

    library, name = index.get("scheduler") or (None, None)
    scheduler_class = getattr(diffusers, name, None) if library == "diffusers" and name else None
    if scheduler_class is None:
        raise ValueError(f"{root}: scheduler {name!r} is not a diffusers scheduler")
    scheduler = scheduler_class.from_pretrained(root, subfolder="scheduler")
    schedule = schedule_from_scheduler(scheduler)
    if not isinstance(schedule, FlowMatchingSchedule):
        raise ValueError(f"{root}: {name} is a {type(schedule).__name__}; HiARPipeline needs a flow-matching "
                         "scheduler (FlowMatchEulerDiscreteScheduler, or UniPC/DPM-Solver with use_flow_sigmas=True)")
    return scheduler_for(schedule)
