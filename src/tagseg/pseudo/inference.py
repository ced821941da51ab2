"""Loading trained models, and the patch classifier's class probabilities for one image."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from tagseg.config import ExperimentConfig, PseudoConfig, config_from_yaml
from tagseg.errors import TagsegError
from tagseg.models.patch_classifier import PatchClassifierNet
from tagseg.training.checkpoint import model_classes, read_model_file


def load_trained_model(path: str | Path, device: torch.device | str = "cpu"
                       ) -> tuple[torch.nn.Module, ExperimentConfig, dict]:
    """Rebuild a trained network of any family from ``model.safetensors`` (weights + metadata),
    in eval mode. Returns (model, its training config, info with 'class_names' and 'palette')."""
    from tagseg.families import family_for_format

    weights, meta = read_model_file(Path(path))
    family = family_for_format(meta.get("format"))
    names, palette = model_classes(Path(path), meta)
    if "config" not in meta:
        raise TagsegError(f"{path}: the model metadata has no 'config'")
    cfg = config_from_yaml(meta["config"], source=f"{path} (metadata 'config')")
    info = {"class_names": names, "palette": palette, "family": family.name}
    cfg.model.weights, cfg.model.pretrained = None, False  # the file holds every weight
    model = family.build(cfg, len(info["class_names"]))
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise TagsegError(f"{path}: weights do not match the model its metadata describes: {exc}") from exc
    return model.to(device).eval(), cfg, info


def load_patch_classifier(path: str | Path, device: torch.device | str = "cpu"
                          ) -> tuple[PatchClassifierNet, ExperimentConfig, dict]:
    """:func:`load_trained_model` for a file that must hold a patch classifier."""
    model, cfg, info = load_trained_model(path, device)
    if not isinstance(model, PatchClassifierNet):
        raise TagsegError(f"{path} holds a {info['family']!r} model, not a patch classifier")
    return model, cfg, info


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


@torch.no_grad()
def patch_merged_probabilities(model: PatchClassifierNet, image: torch.Tensor, labels, cfg: PseudoConfig
                               ) -> torch.Tensor:
    """image float (3, H, W) in [0, 1], labels (K,) -> label-merged probabilities (K, H, W):
    Z at ``cfg.image_size`` (flip / multi-scale averaged), label merge, bilinear upsampling."""
    from tagseg.methods.label_merge import label_merge

    z = patch_probs(model, image, cfg.image_size, cfg.scales, cfg.flip)  # (K, h, w)
    t = torch.as_tensor(labels, device=z.device)[None]
    merged = label_merge(z[None], t)[0]
    return F.interpolate(merged[None], size=image.shape[-2:], mode="bilinear", align_corners=False)[0].float()
