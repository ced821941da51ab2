"""Class probabilities of one image for pseudo-masks, by the model family's rule.

The family name is the one stored in the model file (``info['family']`` of
:func:`tagseg.inference.loading.load_trained_model`): 'patch' (label merge of Z) or 'cam'
(normalised CAMs with a constant background).
"""

from __future__ import annotations

import importlib
from typing import Callable

import numpy as np
import torch
from torch import nn

from tagseg.config import PseudoConfig
from tagseg.data.views import image_to_tensor
from tagseg.engine import precision as P
from tagseg.errors import ConfigError
from tagseg.methods.families import FAMILIES

MergedProbs = Callable[..., torch.Tensor]
"""(model, image float (3, H, W) in [0, 1], labels (K,), cfg, patch_size=<the family's>) -> (K, H, W)."""


def merged_probs_for(family: str) -> MergedProbs:
    """The pseudo-mask rule the registered family ``family`` names (its ``inference``
    ``"module:function"`` inside this layer); ConfigError naming the known families otherwise."""
    fam = FAMILIES.get(family)
    if fam is None or not fam.inference:
        known = sorted(name for name, f in FAMILIES.items() if f.inference)
        raise ConfigError(f"no pseudo-mask inference for model family {family!r} (known: {known})")
    module, _, function = fam.inference.partition(":")
    if not (module == "tagseg.inference" or module.startswith("tagseg.inference.")) or not function:
        raise ConfigError(f"model family {family!r}: its inference rule {fam.inference!r} must be "
                          "'tagseg.inference.<module>:<function>'")
    return getattr(importlib.import_module(module), function)


@torch.no_grad()
def merged_probabilities(model: nn.Module, image: np.ndarray, labels: np.ndarray, cfg: PseudoConfig,
                         device: torch.device | str = "cpu", family: str = "patch") -> torch.Tensor:
    """image uint8 (H, W, 3), labels (K,) -> label-restricted class probabilities (K, H, W), float32
    on CPU, computed by the model family's own rule (patch classifier: label merge of Z) at the
    family's patch size, under
    ``cfg.precision`` autocast and with channels-last weights when ``cfg.channels_last``."""
    rule = merged_probs_for(family)
    patch_size = FAMILIES[family].patch_size
    dev = torch.device(device)
    if cfg.channels_last:
        P.channels_last(model)
    x = image_to_tensor(image).to(dev)
    with P.autocast(P.resolve_precision(cfg.precision, dev, section="pseudo"), dev):
        probs = rule(model, x, labels, cfg, patch_size=patch_size)
    return probs.float().cpu()
