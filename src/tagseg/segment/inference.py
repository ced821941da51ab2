"""Segmentation models on disk (metadata, loading) and predictions with a run's inference settings.

The multi-scale + flip inference and the optional dense CRF are those of
:mod:`tagseg.inference.segment`, shared with pseudo-masks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from tagseg.config import config_to_yaml
from tagseg.errors import TagsegError
from tagseg.inference.segment import segmentation_probs
from tagseg.methods.families import FAMILIES
from tagseg.segment.config import SegInferenceConfig, SegmentExperimentConfig, segment_config_from_yaml
from tagseg.segment.models import SegmentationNet, build_segmenter
from tagseg.engine.checkpoint import model_classes, read_model_file

MODEL_FORMAT = "tagseg.segment/1"


def model_metadata(cfg: SegmentExperimentConfig, class_names: Sequence[str], palette: Sequence[int]) -> dict:
    """Metadata stored in ``model.safetensors``: format, class names, palette, resolved config."""
    return {"format": MODEL_FORMAT, "class_names": list(class_names), "palette": list(palette),
            "config": config_to_yaml(cfg)}


def load_segmenter(path: str | Path, device: torch.device | str = "cpu"
                   ) -> tuple[SegmentationNet, SegmentExperimentConfig, dict]:
    """Rebuild a trained segmentation network from its model file, in eval mode.

    Returns (model, its training config, {'class_names': [...], 'palette': [...]}). Raises
    TagsegError naming the file when it is not a tagseg segmentation model or its weights do
    not fit the stored configuration.
    """
    path = Path(path)
    weights, meta = read_model_file(path)
    fmt = meta.get("format")
    if fmt != MODEL_FORMAT:
        family = next((f.name for f in FAMILIES.values() if f.format == fmt), None)
        hint = f" (a tag classifier of model.family={family}: use it with `tagseg pseudo`)" if family else ""
        raise TagsegError(f"{path} is not a tagseg segmentation model (format={fmt!r}){hint}")
    try:
        cfg = segment_config_from_yaml(meta["config"], source=f"{path} (metadata 'config')")
        names, palette = model_classes(path, meta)
        info = {"class_names": names, "palette": palette}
    except (KeyError, ValueError) as exc:
        raise TagsegError(f"{path}: unreadable model metadata ({exc})") from exc
    cfg.model.weights, cfg.model.pretrained = None, False  # the file holds every weight
    model = build_segmenter(cfg.model, len(info["class_names"]), cfg.augment.crop_size)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise TagsegError(f"{path}: weights do not fit a {cfg.model.head} on {cfg.model.encoder} with "
                          f"{len(info['class_names'])} classes: {str(exc)[:500]}") from exc
    return model.to(device).eval(), cfg, info


@torch.no_grad()
def predict_probs(model: SegmentationNet, image: np.ndarray, inference: SegInferenceConfig,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """image uint8 (H, W, 3) -> class probabilities (K, H, W) float32 on the CPU (after the CRF if on),
    with the scales / flip / CRF / precision / channels-last of ``inference`` (see
    :mod:`tagseg.inference.segment`)."""
    return segmentation_probs(model, image, inference.scales, inference.flip, inference.crf, inference.crf_preset,
                              device, precision=inference.precision, channels_last=inference.channels_last)


def predict_mask(model: SegmentationNet, image: np.ndarray, inference: SegInferenceConfig,
                 device: torch.device | str = "cpu") -> np.ndarray:
    """image uint8 (H, W, 3) -> class-index mask uint8 (H, W)."""
    return predict_probs(model, image, inference, device).argmax(0).numpy().astype(np.uint8)
