"""Attention kernels: one block-causal entry point over several backends (see attention.py)."""

import sys as _sys
from pathlib import Path as _Path


def _installed_kernels():
    """Hugging Face's `kernels` package, if installed, when this folder was imported as the top-level `kernels`.

    This folder is fdistill.kernels. Run from a checkout's root (`python -m …`, `python -c`), the root is on
    sys.path and the folder is also found as `kernels`, hiding the package of that name that diffusers and
    transformers import. The installed one is then loaded in its place.
    """
    from importlib.machinery import PathFinder
    from importlib.util import module_from_spec

    root = _Path(__file__).resolve().parent.parent
    spec = PathFinder.find_spec("kernels", [p for p in _sys.path if _Path(p or ".").resolve() != root])
    if spec is None or spec.loader is None:
        return None
    module = module_from_spec(spec)
    _sys.modules["kernels"] = module  # `import kernels` returns what sys.modules holds once this file ran
    spec.loader.exec_module(module)
    return module


if __name__ != "kernels" or _installed_kernels() is None:
    from .attention import BACKENDS, available_backends, block_causal_attention, block_causal_mask

    __all__ = ["BACKENDS", "available_backends", "block_causal_attention", "block_causal_mask"]
