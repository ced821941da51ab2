"""Seeds for refinement, recomputed from the run's model through the inference layer.

Refinement needs foreground scores of the present classes on a coarse grid (IRN: stride 4, PSA:
stride 8); full-resolution probabilities are what pseudo writes, and writing scores there too
would tie the two stages' file formats together. The model pass is cheap next to what IRN and PSA
run anyway (the encoder on the same image for boundaries / affinities), so the refine stage asks
the inference layer again, under the run's ``pseudo`` settings (size, scales, flip, precision).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from tagseg.config import PseudoConfig
from tagseg.data.views import image_to_tensor
from tagseg.engine import precision as P
from tagseg.inference.cam import normalised_cams
from tagseg.inference.pseudo import merged_probabilities
from tagseg.methods.cam_objective import cam_probabilities
from tagseg.methods.families import get_family


class Seeds(NamedTuple):
    """scores: float32 (C, H, W) foreground scores in [0, 1] of the present classes, at image size;
    keys: int64 (C,) their class ids (>= 1); probs: float32 (K, H, W) the pseudo stage's
    class probabilities of the same image (background included)."""

    scores: np.ndarray
    keys: np.ndarray
    probs: torch.Tensor


def present_keys(labels: np.ndarray) -> np.ndarray:
    """Foreground class ids of a multi-hot label vector (K,) (index 0 = background)."""
    return (np.flatnonzero(np.asarray(labels)[1:] > 0.5) + 1).astype(np.int64)


@torch.no_grad()
def seeds_of(model: nn.Module, image: np.ndarray, labels: np.ndarray, cfg: PseudoConfig, family: str,
             device: torch.device | str = "cpu") -> Seeds:
    """The seeds of one image uint8 (H, W, 3) with multi-hot ``labels`` (K,): the CAM family's
    max-normalised CAMs (SEAM: PCM-revised), or the patch family's merged class probabilities, of the present classes."""
    keys = present_keys(labels)
    if not get_family(family).cam_maps:
        probs = merged_probabilities(model, image, labels, cfg, device, family)
        return Seeds(probs[keys].numpy().astype(np.float32), keys, probs)
    # the CAM family's (and SEAM's, PCM-revised) probabilities are its normalised CAMs plus a constant background
    # (inference.cam.cam_merged_probabilities): one forward pass gives both
    dev = torch.device(device)
    if cfg.channels_last:
        P.channels_last(model)
    with P.autocast(P.resolve_precision(cfg.precision, dev, section="pseudo"), dev):
        cams = normalised_cams(model, image_to_tensor(image).to(dev), labels, cfg, get_family(family).patch_size)
        probs = cam_probabilities(cams, cfg.bg_threshold)
    cams, probs = cams.float().cpu(), probs.float().cpu()
    return Seeds(cams[keys - 1].numpy().astype(np.float32), keys, probs)
