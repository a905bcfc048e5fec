"""fdistill: one-step image generators by f-divergence distillation, few-step causal video by HiAR."""

_LAZY = {"FDistillPipeline": "fdistill.pipelines"}


def __getattr__(name: str):
    # pipelines import diffusers/transformers: load them on first use, not at ``import fdistill``
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
