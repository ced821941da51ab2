"""Segmentation-network inference: multi-scale + flip logits, softmax, optional dense CRF.

For every scale s the image is resized to (round(s·H), round(s·W)) (bilinear, antialiased when
shrinking), passed through the network together with its horizontal mirror when ``flip`` is on,
the mirrored logits are flipped back, and all logits are upsampled (bilinear) to H × W and
averaged. Class probabilities are the softmax of that average; the optional CRF refines them
(preset 'segmentation' of METHODS.md §5 by default).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from tagseg.data.views import image_to_tensor
from tagseg.engine import precision as P
from tagseg.inference.multiscale import Forward, multiscale_maps
from tagseg.inference.refine import refine_with_crf


def segmentation_forward(model: nn.Module) -> Forward:
    """Adapter: batch (B, 3, h, w) -> float32 logits (B, K, h, w) of a segmentation network."""
    return lambda batch: model(batch).float()


@torch.no_grad()
def multiscale_logits(model: nn.Module, image: torch.Tensor, scales: Sequence[float] = (1.0,),
                      flip: bool = False) -> torch.Tensor:
    """image float (3, H, W) in [0, 1] (on the model's device) -> mean logits (K, H, W) float32."""
    return multiscale_maps(segmentation_forward(model), image, scales, flip, "aspect")


@torch.no_grad()
def segmentation_probs(model: nn.Module, image: np.ndarray, scales: Sequence[float] = (1.0,), flip: bool = False,
                       crf: str = "none", crf_preset: str = "segmentation",
                       device: torch.device | str = "cpu", precision: str = "fp32",
                       channels_last: bool = False) -> torch.Tensor:
    """image uint8 (H, W, 3) -> class probabilities (K, H, W) float32 on the CPU (after the CRF if on).

    precision: 'auto' | 'fp32' | 'bf16' | 'fp16' autocast of the network (``inference.precision``);
    channels_last: NHWC weights (``inference.channels_last``). Logits leave autocast as float32."""
    dev = torch.device(device)
    if channels_last:
        P.channels_last(model)
    x = image_to_tensor(image).to(dev)
    with P.autocast(P.resolve_precision(precision, dev, section="inference"), dev):
        logits = multiscale_logits(model, x, scales, flip)
    probs = torch.softmax(logits.float(), dim=0).cpu()
    if crf != "none":
        probs = refine_with_crf(image, probs, crf, crf_preset)
    return probs
