"""CAM-family pseudo-mask probabilities (METHODS.md §2).

ReLU of the CAMs, summed over scales and flips after bilinear upsampling to the image, each
present class divided by its maximum, absent classes 0, background a constant
``pseudo.bg_threshold``; the class scores are divided by their sum per pixel (see
:func:`tagseg.methods.cam_objective.cam_probabilities`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tagseg.config import PseudoConfig
from tagseg.inference.multiscale import Forward, multiscale_maps, multiscale_maps_batch
from tagseg.methods.cam_objective import cam_probabilities, normalise_cams
from tagseg.models.encoder import PATCH_STRIDE


def cam_forward(model: nn.Module) -> Forward:
    """Adapter: batch (B, 3, S, S) -> ReLU CAMs (B, K−1, h, w) from the network's ``inference_maps``."""
    return lambda batch: F.relu(model.inference_maps(batch).float())


@torch.no_grad()
def cam_maps(model: nn.Module, image: torch.Tensor, size: int, scales: Sequence[float] = (1.0,),
             flip: bool = False, patch_size: int = PATCH_STRIDE) -> torch.Tensor:
    """ReLU CAMs (K−1, H, W) of ``image`` (3, H, W) in [0, 1]: for each scale the image resized to
    a square of ``size·scale`` px (a multiple of the family's ``patch_size``), with ``flip`` also
    mirrored; every map is upsampled (bilinear) to H×W and the maps are summed."""
    return multiscale_maps(cam_forward(model), image, scales, flip, "square", tuple(image.shape[-2:]),
                           base_size=size, snap=patch_size, average=False)


@torch.no_grad()
def cam_maps_batch(model: nn.Module, images: Sequence[torch.Tensor], size: int, scales: Sequence[float] = (1.0,),
                   flip: bool = False, patch_size: int = PATCH_STRIDE) -> list[torch.Tensor]:
    """:func:`cam_maps` of several images (3, H_i, W_i): per scale all images and their mirrors
    in one forward (their inputs are all ``size·scale`` squares). Returns (K−1, H_i, W_i) each."""
    return multiscale_maps_batch(cam_forward(model), images, scales, flip, "square",
                                 [tuple(im.shape[-2:]) for im in images], base_size=size, snap=patch_size,
                                 average=False)


@torch.no_grad()
def normalised_cams(model: nn.Module, image: torch.Tensor, labels: np.ndarray, cfg: PseudoConfig,
                    patch_size: int = PATCH_STRIDE) -> torch.Tensor:
    """(K−1, H, W) normalised CAMs of one image at ``cfg.image_size`` / ``scales`` / ``flip``."""
    return normalise_cams(cam_maps(model, image, cfg.image_size, cfg.scales, cfg.flip, patch_size), labels)


@torch.no_grad()
def cam_merged_probabilities(model: nn.Module, image: torch.Tensor, labels: np.ndarray, cfg: PseudoConfig,
                             patch_size: int = PATCH_STRIDE) -> torch.Tensor:
    """(K, H, W) class probabilities of one image (background = ``cfg.bg_threshold``)."""
    return cam_probabilities(normalised_cams(model, image, labels, cfg, patch_size), cfg.bg_threshold)
