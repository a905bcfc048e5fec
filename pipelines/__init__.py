"""diffusers pipelines for fdistill students (installed as ``fdistill.pipelines``)."""

from fdistill.models.hiar_cell import HiARPlan, NoiseBank, generate_video

from .diffusers_loading import register_with_diffusers
from .fdistill_pipeline import FDistillPipeline, export_pipeline
from .hiar_parallel import generate_video_pipelined
from .hiar_pipeline import HiARPipeline, HiARPipelineOutput, LabelEmbeddingModel, hiar_pipeline_from_teacher
from .hiar_student import export_hiar_student, load_hiar_student

# DiffusionPipeline.from_pretrained(folder) finds our classes once this package is imported
register_with_diffusers(FDistillPipeline, HiARPipeline)

__all__ = [
    "FDistillPipeline",
    "HiARPipeline",
    "HiARPipelineOutput",
    "HiARPlan",
    "LabelEmbeddingModel",
    "NoiseBank",
    "export_hiar_student",
    "export_pipeline",
    "generate_video",
    "generate_video_pipelined",
    "hiar_pipeline_from_teacher",
    "load_hiar_student",
]
