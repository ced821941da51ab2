"""Model families: how each kind of WSSS network is built, trained and turned into pseudo-masks.

The trainer, the pseudo-mask generator and the CLI work with any registered family:

- ``build(cfg, num_classes) -> nn.Module``
- ``loss(model, core, batch, cfg, epoch) -> (total, parts)``: ``model`` is what to differentiate
  through (``core`` or its DDP wrapper); ``batch`` holds the items of
  :class:`tagseg.data.views.TrainingViews`.
- ``merged_probs(core, image, labels, pseudo_cfg) -> (K, H, W)``: class probabilities for one
  image (float (3, H, W) in [0, 1]) restricted to its labels, from which pseudo-masks are the
  argmax.

A family's network has an ``encoder`` with ``block_groups()`` / ``final_norm()`` (for the
warm-up/unfreeze schedule) and ``head_parameters()``; it may define ``on_epoch_start(epoch)`` and
``on_epoch_end(epoch)`` hooks, which the trainer calls. A trained model file records its
family's ``format`` so it can be rebuilt without its config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from tagseg.config import ExperimentConfig, PseudoConfig
from tagseg.errors import ConfigError, TagsegError


@dataclass(frozen=True)
class Family:
    name: str
    format: str
    build: Callable[[ExperimentConfig, int], nn.Module]
    loss: Callable[[nn.Module, nn.Module, dict, ExperimentConfig, int], tuple[torch.Tensor, dict]]
    merged_probs: Callable[[nn.Module, torch.Tensor, np.ndarray, PseudoConfig], torch.Tensor]


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    _load_builtin()
    if name not in FAMILIES:
        raise ConfigError(f"model.family={name!r}: choose one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_for_format(fmt: str | None) -> Family:
    _load_builtin()
    for fam in FAMILIES.values():
        if fam.format == fmt:
            return fam
    raise TagsegError(f"not a tagseg model file (format={fmt!r}; known: {[f.format for f in FAMILIES.values()]})")


def _load_builtin() -> None:
    """Import the modules that register the built-in families (kept lazy to avoid cycles)."""
    import tagseg.methods.cam_objective  # noqa: F401  (registers 'cam')
    import tagseg.methods.objective  # noqa: F401  (registers 'patch')
