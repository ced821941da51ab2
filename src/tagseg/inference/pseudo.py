"""Class probabilities of one image for pseudo-masks, by the model family's rule.

The family name is the one stored in the model file (``info['family']`` of
:func:`tagseg.inference.loading.load_trained_model`): 'patch' (label merge of Z) or 'cam'
(normalised CAMs with a constant background).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from tagseg.config import PseudoConfig
from tagseg.data.views import image_to_tensor
from tagseg.engine import precision as P
from tagseg.errors import ConfigError
from tagseg.inference.cam import cam_merged_probabilities
from tagseg.inference.patch import patch_merged_probabilities

MergedProbs = Callable[[nn.Module, torch.Tensor, np.ndarray, PseudoConfig], torch.Tensor]

MERGED_PROBS: dict[str, MergedProbs] = {"patch": patch_merged_probabilities, "cam": cam_merged_probabilities,
                                          "seam": cam_merged_probabilities}
"""family name -> (model, image float (3, H, W) in [0, 1], labels (K,), cfg) -> (K, H, W)."""


def merged_probs_for(family: str) -> MergedProbs:
    """The pseudo-mask rule of ``family``; ConfigError naming the known families otherwise."""
    try:
        return MERGED_PROBS[family]
    except KeyError:
        raise ConfigError(f"no pseudo-mask inference for model family {family!r} "
                          f"(known: {sorted(MERGED_PROBS)})") from None


@torch.no_grad()
def merged_probabilities(model: nn.Module, image: np.ndarray, labels: np.ndarray, cfg: PseudoConfig,
                         device: torch.device | str = "cpu", family: str = "patch") -> torch.Tensor:
    """image uint8 (H, W, 3), labels (K,) -> label-restricted class probabilities (K, H, W), float32
    on CPU, computed by the model family's own rule (patch classifier: label merge of Z), under
    ``cfg.precision`` autocast and with channels-last weights when ``cfg.channels_last``."""
    rule = merged_probs_for(family)
    dev = torch.device(device)
    if cfg.channels_last:
        P.channels_last(model)
    x = image_to_tensor(image).to(dev)
    with P.autocast(P.resolve_precision(cfg.precision, dev, section="pseudo"), dev):
        probs = rule(model, x, labels, cfg)
    return probs.float().cpu()
