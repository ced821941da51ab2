"""The patch classifier's class probabilities for one image (METHODS.md §1, "Pseudo-masks").

Z at the inference size (averaged over scales and horizontal flips), label merge, bilinear
upsampling to the image: the patch family's ``merged_probs``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from tagseg.config import PseudoConfig
from tagseg.methods.label_merge import label_merge
from tagseg.models.patch_classifier import PatchClassifierNet


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
    z = patch_probs(model, image, cfg.image_size, cfg.scales, cfg.flip)  # (K, h, w)
    t = torch.as_tensor(labels, device=z.device)[None]
    merged = label_merge(z[None], t)[0]
    return F.interpolate(merged[None], size=image.shape[-2:], mode="bilinear", align_corners=False)[0].float()
