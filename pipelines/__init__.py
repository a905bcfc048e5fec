"""diffusers pipelines for fdistill students (installed as ``fdistill.pipelines``)."""

from .fdistill_pipeline import FDistillPipeline, export_pipeline

__all__ = ["FDistillPipeline", "export_pipeline"]
