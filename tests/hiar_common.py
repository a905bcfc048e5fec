"""Tiny causal Wan config shared by the HiAR test modules (fixtures ``model``/``text`` in conftest)."""

from fdistill.schedules import FlowMatchingSchedule

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=2, out_channels=2,
            text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, rope_max_seq_len=64)
SCHEDULE = FlowMatchingSchedule(shift=3.0)

