"""Attention kernels: one block-causal entry point over several backends (see attention.py)."""

from .attention import BACKENDS, available_backends, block_causal_attention, block_causal_mask

__all__ = ["BACKENDS", "available_backends", "block_causal_attention", "block_causal_mask"]
