"""Segmentation inference: load a trained model, multi-scale + flip logits, optional dense CRF.

For every scale s the image is resized to (round(s·H), round(s·W)) (bilinear, antialiased when
shrinking), passed through the network together with its horizontal mirror when ``flip`` is on,
the mirrored logits are flipped back, and all logits are upsampled (bilinear) to H × W and
averaged. Class probabilities are the softmax of that average; the optional CRF refines them
with the 'segmentation' preset of METHODS.md §5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tagseg.config import config_to_yaml
from tagseg.data.views import image_to_tensor
from tagseg.errors import TagsegError
from tagseg.segmentation.config import SegInferenceConfig, SegmentExperimentConfig, segment_config_from_yaml
from tagseg.segmentation.models import SegmentationNet, build_segmenter
from tagseg.engine.checkpoint import model_classes, read_model_file

MODEL_FORMAT = "tagseg.segmentation/1"


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
        hint = " (a patch-classifier model: use it with `tagseg pseudo`)" if fmt == "tagseg.patch_classifier/1" else ""
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


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


@torch.no_grad()
def multiscale_logits(model: SegmentationNet, image: torch.Tensor, scales: Sequence[float] = (1.0,),
                      flip: bool = False) -> torch.Tensor:
    """image float (3, H, W) in [0, 1] (on the model's device) -> mean logits (K, H, W) float32."""
    _, h, w = image.shape
    acc = None
    n = 0
    for s in scales:
        size = scaled_size(h, w, s)
        x = image[None]
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=s < 1)
        batch = torch.cat([x, x.flip(-1)]) if flip else x
        logits = model(batch).float()
        if flip:
            logits = torch.stack([logits[0], logits[1].flip(-1)])
        if logits.shape[-2:] != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        part = logits.sum(0)
        acc = part if acc is None else acc + part
        n += batch.shape[0]
    return acc / n


def refine_with_crf(image: np.ndarray, probs: torch.Tensor, backend: str, preset: str = "segmentation") -> torch.Tensor:
    """Dense-CRF refinement of probs (K, H, W) for image uint8 (H, W, 3); backend torch | pydensecrf."""
    try:
        from tagseg.pseudo.crf import dense_crf, get_preset
    except ImportError as exc:
        raise TagsegError(f"inference.crf={backend!r} needs the dense CRF module tagseg.pseudo.crf, "
                          f"which cannot be imported: {exc}") from exc
    return dense_crf(image, probs.float(), get_preset(preset), backend=backend)


@torch.no_grad()
def predict_probs(model: SegmentationNet, image: np.ndarray, inference: SegInferenceConfig,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """image uint8 (H, W, 3) -> class probabilities (K, H, W) float32 on the CPU (after the CRF if on)."""
    from tagseg.engine import precision as P

    dev = torch.device(device)
    if inference.channels_last:
        P.channels_last(model)
    x = image_to_tensor(image).to(dev)
    with P.autocast(P.resolve_precision(inference.precision, dev, section="inference"), dev):
        logits = multiscale_logits(model, x, inference.scales, inference.flip)
    probs = torch.softmax(logits.float(), dim=0).cpu()
    if inference.crf != "none":
        probs = refine_with_crf(image, probs, inference.crf, inference.crf_preset)
    return probs


def predict_mask(model: SegmentationNet, image: np.ndarray, inference: SegInferenceConfig,
                 device: torch.device | str = "cpu") -> np.ndarray:
    """image uint8 (H, W, 3) -> class-index mask uint8 (H, W)."""
    return predict_probs(model, image, inference, device).argmax(0).numpy().astype(np.uint8)
