"""What a model family is: how its network is built, trained and turned into pseudo-masks.

- ``build(cfg, num_classes) -> nn.Module``: the network, with the modules of its enabled add-ons;
- ``loss(model, core, batch, cfg, epoch) -> (total, parts)``: ``model`` is what to differentiate
  through (``core`` or its DDP wrapper); ``batch`` holds the items of
  :class:`tagseg.data.views.TrainingViews`;
- ``validate(cfg)``: family-specific checks at load time (ConfigError naming the key).

- ``inference``: its pseudo-mask rule, ``"module:function"`` inside :mod:`tagseg.inference`
  (that layer sits above this one, so the family names the rule and
  :func:`tagseg.inference.pseudo.merged_probs_for` imports it): ``(model, image float (3, H, W)
  in [0, 1], labels (K,), PseudoConfig, patch_size=...) -> (K, H, W)`` label-restricted class
  probabilities.
- ``cam_maps``: its pseudo-masks are normalised class activation maps against a background
  threshold (``pseudo.bg_threshold``), so the background sweep and the refine stage's CAM seeds
  apply to it (``cam``, ``seam``); otherwise its rule gives class probabilities directly.
- ``patch_size``: px; its network's inputs are multiples of it and its coarsest grid cell is that
  size (the ViT patch, the CNN's stride-16 map); training views and the inference rule take it
  from here.
- ``capabilities``: what it offers add-ons (:data:`tagseg.addons.registry.CAPABILITIES`); an
  add-on switch that needs a capability the family lacks is refused at load time, naming both.

A family's network has an ``encoder`` with ``block_groups()`` / ``final_norm()`` (for the
warm-up/unfreeze schedule), ``head_parameters()`` and the add-on container ``addons`` (an
``nn.ModuleDict``, :mod:`tagseg.models.addon_slots`); it may define ``on_epoch_start(epoch)`` and
``on_epoch_end(epoch)`` hooks, which the training engine calls. A trained model file records its
family's ``format`` so it can be rebuilt without its config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from tagseg.config import ExperimentConfig
from tagseg.models.encoder import PATCH_STRIDE


@dataclass(frozen=True)
class Family:
    name: str
    format: str
    build: Callable[[ExperimentConfig, int], nn.Module]
    loss: Callable[[nn.Module, nn.Module, dict, ExperimentConfig, int], tuple[torch.Tensor, dict]]
    validate: Callable[[ExperimentConfig], None] = lambda cfg: None
    inference: str = ""
    cam_maps: bool = False
    capabilities: frozenset = frozenset()
    patch_size: int = PATCH_STRIDE
