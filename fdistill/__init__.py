"""fdistill: one-step image generators by f-divergence distillation, few-step causal video by HiAR.

The core package imports nothing heavy at ``import fdistill``; pipelines live in ``fdistill.pipelines``
(``from fdistill.pipelines import FDistillPipeline, HiARPipeline``), trainers in ``fdistill.training``.
"""
