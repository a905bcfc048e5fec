"""Models: the causal Wan video transformer and its KV cache."""

from .causal_wan import CausalWanTransformer3DModel
from .kv_cache import KVCache

__all__ = ["CausalWanTransformer3DModel", "KVCache"]
