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
