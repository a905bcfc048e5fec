"""Offline evaluation: FID/KID (clean-fid statistics), precision/recall, VBench-style video metrics.

Image metrics embed images with the shipped digits classifier by default (``FEATURE_SPACES`` also
names "classifier_b", an independent second classifier) and with clean-fid's Inception-v3 only
when its weights file is on disk; nothing here downloads anything.
"""

from fdistill.eval.fid import (
    FEATURE_SPACES,
    class_coverage,
    classifier_feature_extractor,
    compute_fid,
    compute_kid,
    extract_features,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_feature_extractor,
    kid_from_features,
)
from fdistill.eval.precision_recall import compute_precision_recall, precision_recall
from fdistill.eval.vbench_adapter import VBenchUnavailable, run_vbench, write_mp4s
from fdistill.eval.video import (
    centroid_speed,
    digit_crops,
    dynamic_degree,
    evaluate_video,
    flow_magnitude,
    frame_accuracy,
    subject_consistency,
    temporal_drift,
    temporal_flickering,
)

__all__ = [
    "FEATURE_SPACES",
    "VBenchUnavailable",
    "centroid_speed",
    "class_coverage",
    "classifier_feature_extractor",
    "compute_fid",
    "compute_kid",
    "compute_precision_recall",
    "digit_crops",
    "dynamic_degree",
    "evaluate_video",
    "frame_accuracy",
    "extract_features",
    "feature_statistics",
    "fid_from_features",
    "flow_magnitude",
    "frechet_distance",
    "inception_feature_extractor",
    "kid_from_features",
    "precision_recall",
    "run_vbench",
    "subject_consistency",
    "temporal_drift",
    "temporal_flickering",
    "write_mp4s",
]
