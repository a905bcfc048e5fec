"""What several test modules share: the tiny causal Wan config (fixtures ``model``/``text`` in conftest), the
flow-matching schedule of the HiAR tests, and the one config builder of the trainers' tests."""

from typing import Any

from fdistill.schedules import FlowMatchingSchedule
from fdistill.training.config import build

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=2, out_channels=2,
            text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, rope_max_seq_len=64)
TINY_1CH = dict(TINY, patch_size=[1, 2, 2], attention_head_dim=8, in_channels=1, out_channels=1, text_dim=16,
                freq_dim=16, ffn_dim=32)
"""The same tiny Wan for one-channel (grey) clips: the moving-digits testbed's teachers and students."""
SCHEDULE = FlowMatchingSchedule(shift=3.0)


def build_config(cls: type, base: dict[str, Any], **overrides: Any):
    """``cls`` built from ``base`` with ``overrides`` whose keys name nested settings with "." or "__"
    (``warmup__steps=0``, ``**{"warmup.steps": 0}``), through the trainers' own config builder."""
    import copy

    data = copy.deepcopy(base)
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.replace("__", ".").split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return build(cls, data)


def tiny_label_pipeline(num_frames: int):
    """A class-conditional HiARPipeline over a tiny 1-channel causal Wan (8×8 frames, blocks of 2), seed 0."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    from fdistill.models import CausalWanTransformer3DModel
    from fdistill.pipelines.hiar_pipeline import HiARPipeline, LabelEmbeddingModel

    torch.manual_seed(0)
    transformer = CausalWanTransformer3DModel(**{**TINY, "in_channels": 1, "out_channels": 1}).eval()
    pipe = HiARPipeline(transformer, FlowMatchEulerDiscreteScheduler(shift=2.0),
                        label_embedding=LabelEmbeddingModel(10, 32, 1), frames_per_block=2, height=8, width=8,
                        num_frames=num_frames)
    pipe.set_progress_bar_config(disable=True)
    return pipe

