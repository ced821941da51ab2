"""Patch probabilities of a trained patch classifier on one image (flip / multi-scale averaging)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from tagseg.config import ExperimentConfig, config_from_yaml
from tagseg.errors import TagsegError
from tagseg.models.patch_classifier import PatchClassifierNet, build_patch_classifier
from tagseg.training.checkpoint import read_model_file


def load_patch_classifier(path: str | Path, device: torch.device | str = "cpu"
                          ) -> tuple[PatchClassifierNet, ExperimentConfig, dict]:
    """Rebuild a trained network from ``model.safetensors`` (weights + metadata) in eval mode.

    Returns (model, its training config, metadata with 'class_names' and 'palette').
    """
    import json

    weights, meta = read_model_file(Path(path))
    if meta.get("format") != "tagseg.patch_classifier/1":
        raise TagsegError(f"{path} is not a tagseg patch-classifier model (format={meta.get('format')!r})")
    cfg = config_from_yaml(meta["config"])
    info = {"class_names": json.loads(meta["class_names"]), "palette": json.loads(meta["palette"])}
    cfg.model.weights, cfg.model.pretrained = None, False  # the file holds every weight
    model = build_patch_classifier(cfg.model, len(info["class_names"]), cfg.data.image_size)
    model.load_state_dict(weights)
    return model.to(device).eval(), cfg, info


def _size(base: int, scale: float) -> int:
    return max(16, int(round(base * scale / 16)) * 16)


@torch.no_grad()
def patch_probs(model: PatchClassifierNet, image: torch.Tensor, size: int, scales: Sequence[float] = (1.0,),
                flip: bool = False) -> torch.Tensor:
    """image float (3, H, W) in [0, 1] -> Z averaged over scales (and flips): (K, h, w) on the
    scale-1 grid (h = w = size/16). Each scale's input is the image resized to a square."""
    base_cells = size // 16
    acc = None
    n = 0
    for s in scales:
        side = _size(size, s)
        x = F.interpolate(image[None], size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        batch = torch.cat([x, x.flip(-1)]) if flip else x
        z = model(batch).probs.permute(0, 3, 1, 2)  # (n, K, c, c)
        if flip:
            z = torch.stack([z[0], z[1].flip(-1)])
        if z.shape[-1] != base_cells:
            z = F.interpolate(z, size=(base_cells, base_cells), mode="bilinear", align_corners=False)
        z = z.sum(0)
        acc = z if acc is None else acc + z
        n += batch.shape[0]
    return acc / n
