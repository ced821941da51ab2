"""The segmentation stage: DeepLab (v2 / v3+) on timm backbones trained on pseudo-masks (its
config, data, network, task and best-epoch hook), multi-scale + flip inference with optional dense
CRF, evaluation and ``tagseg predict``."""
