"""The segmentation stage: DeepLab (v2 / v3+) on timm backbones trained on pseudo-masks,
multi-scale + flip inference with optional dense CRF, evaluation and ``tagseg predict``."""

from tagseg.segment.config import (
    SegAugmentConfig, SegInferenceConfig, SegModelConfig, SegmentExperimentConfig, SegmentSourceConfig,
    SegTrainConfig, load_segment_config,
)

__all__ = [
    "SegAugmentConfig",
    "SegInferenceConfig",
    "SegModelConfig",
    "SegmentExperimentConfig",
    "SegmentSourceConfig",
    "SegTrainConfig",
    "load_segment_config",
]
