"""Patch-classifier pseudo-mask probabilities (METHODS.md §1, "Pseudo-masks").

Z (the patch class probabilities) is averaged over scales and flips on the scale-1 grid
(h = w = image_size/p, p the family's patch size), restricted to the image's labels by the label merge, and upsampled
(bilinear) to the image size. ``pseudo.align_corners`` (default true, the official ViT-PCM code):
the input resize and the upsampling are bilinear with aligned corners and no antialiasing.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tagseg.config import PseudoConfig
from tagseg.inference.multiscale import Forward, multiscale_maps
from tagseg.methods.label_merge import label_merge
from tagseg.models.encoder import PATCH_STRIDE


def patch_forward(model: nn.Module) -> Forward:
    """Adapter: batch (B, 3, S, S) -> Z (B, K, S/p, S/p) from the classifier's ``probs``."""
    return lambda batch: model(batch).probs.permute(0, 3, 1, 2)


@torch.no_grad()
def patch_probs(model: nn.Module, image: torch.Tensor, size: int, scales: Sequence[float] = (1.0,),
                flip: bool = False, align_corners: bool = False, patch_size: int = PATCH_STRIDE) -> torch.Tensor:
    """image float (3, H, W) in [0, 1] -> Z averaged over scales (and flips): (K, h, w) on the
    scale-1 grid (h = w = size/patch_size). Each scale's input is the image resized to a square
    whose side is a multiple of ``patch_size``."""
    cells = size // patch_size
    return multiscale_maps(patch_forward(model), image, scales, flip, "square", (cells, cells), base_size=size,
                           snap=patch_size, align_corners=align_corners)


@torch.no_grad()
def patch_merged_probabilities(model: nn.Module, image: torch.Tensor, labels: np.ndarray | torch.Tensor,
                               cfg: PseudoConfig, patch_size: int = PATCH_STRIDE) -> torch.Tensor:
    """image float (3, H, W) in [0, 1], labels (K,) -> label-merged probabilities (K, H, W):
    Z at ``cfg.image_size`` (flip / multi-scale averaged) on the grid of the family's
    ``patch_size``, label merge, bilinear upsampling."""
    z = patch_probs(model, image, cfg.image_size, cfg.scales, cfg.flip, cfg.align_corners, patch_size)  # (K, h, w)
    t = torch.as_tensor(labels, device=z.device)[None]
    merged = label_merge(z[None], t)[0]
    return F.interpolate(merged[None], size=image.shape[-2:], mode="bilinear",
                         align_corners=cfg.align_corners)[0].float()
