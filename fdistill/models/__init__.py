"""Models: the causal Wan video transformer and its KV cache (the digits classifier, the
discriminator heads and the tiny SD builder live in their own submodules).

``CausalWanTransformer3DModel`` imports diffusers, so it loads on first use: importing a
submodule such as ``fdistill.models.classifier`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .causal_wan import CacheForward, CausalWanTransformer3DModel
    from .kv_cache import KVCache

_LAZY = {"CacheForward": ".causal_wan", "CausalWanTransformer3DModel": ".causal_wan", "KVCache": ".kv_cache"}

__all__ = ["CacheForward", "CausalWanTransformer3DModel", "KVCache"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
