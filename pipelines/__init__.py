"""diffusers pipelines for fdistill students (installed as ``fdistill.pipelines``)."""

from .fdistill_pipeline import FDistillPipeline, export_pipeline
from .hiar_cell import HiARPlan, NoiseBank, generate_video
from .hiar_parallel import generate_video_pipelined
from .hiar_pipeline import HiARPipeline, HiARPipelineOutput, LabelEmbeddingModel, hiar_pipeline_from_teacher

__all__ = [
    "FDistillPipeline",
    "HiARPipeline",
    "HiARPipelineOutput",
    "HiARPlan",
    "LabelEmbeddingModel",
    "NoiseBank",
    "export_pipeline",
    "generate_video",
    "generate_video_pipelined",
    "hiar_pipeline_from_teacher",
]
