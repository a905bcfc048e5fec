"""Offline evaluation: FID/KID (clean-fid statistics), precision/recall, density/coverage, VBench-style
video metrics.

Image metrics embed images with the shipped digits classifier by default (``FEATURE_SPACES`` also
names "classifier_b", an independent second classifier; ``EXTERNAL_SPACES`` names two spaces the
project did not design, raw "pixels" and "sklearn_mlp", a scikit-learn network) and with clean-fid's
Inception-v3 only when its weights file is on disk; nothing here downloads anything.
"""

from fdistill.eval.external_features import EXTERNAL_SPACES, sklearn_mlp_predict
from fdistill.eval.fid import (
    ALL_FEATURE_SPACES,
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
from fdistill.eval.precision_recall import compute_precision_recall, density_coverage, precision_recall
from fdistill.eval.vbench_adapter import VBenchUnavailable, run_vbench, write_mp4s
from fdistill.eval.video import (
    centroid_speed,
    digit_crops,
    dynamic_degree,
    evaluate_video,
    flow_magnitude,
    frame_accuracy,
    moving_digits_report,
    subject_consistency,
    temporal_drift,
    temporal_flickering,
)

__all__ = [
    "ALL_FEATURE_SPACES",
    "EXTERNAL_SPACES",
    "FEATURE_SPACES",
    "VBenchUnavailable",
    "centroid_speed",
    "class_coverage",
    "classifier_feature_extractor",
    "compute_fid",
    "compute_kid",
    "compute_precision_recall",
    "density_coverage",
    "digit_crops",
    "dynamic_degree",
    "evaluate_video",
    "frame_accuracy",
    "moving_digits_report",
    "extract_features",
    "feature_statistics",
    "fid_from_features",
    "flow_magnitude",
    "frechet_distance",
    "inception_feature_extractor",
    "kid_from_features",
    "precision_recall",
    "run_vbench",
    "sklearn_mlp_predict",
    "subject_consistency",
    "temporal_drift",
    "temporal_flickering",
    "write_mp4s",
]
