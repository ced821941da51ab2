"""The full training objective of the patch-classifier family (METHODS.md §1, "Totals").

ViT-PCM: MCE(max) + L_ET + L2. TKP-PCL: MCE(topk) + λ·PCE + L_ET + L2. Baseline: MCE(avg) + L2
(+ whatever else the config switches on). View A and the L_ET mosaic (both S×S) go through the
network in one batched forward pass; the L_ET target comes from a separate eval-mode,
no-gradient pass over view A.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tagseg.config import ExperimentConfig, MethodConfig, PseudoConfig
from tagseg.families import Family, register_family
from tagseg.methods.equivariance import build_mosaic, equivariance_loss, equivariance_target
from tagseg.methods.losses import l2_penalty, multilabel_ce
from tagseg.methods.pce import patch_contrastive_error
from tagseg.methods.pooling import pool_patch_scores
from tagseg.models.patch_classifier import PatchClassifierNet, build_patch_classifier

PATCH = 16


@torch.no_grad()
def eval_mode_probs(core: PatchClassifierNet, images: torch.Tensor) -> torch.Tensor:
    """Patch probabilities (B, K, h, w) in eval mode, no gradient; restores the training mode."""
    modes = [m.training for m in core.modules()]
    core.eval()
    probs = core(images).probs.permute(0, 3, 1, 2)
    for m, mode in zip(core.modules(), modes):
        m.training = mode
    return probs


def patch_classifier_loss(model: nn.Module, core: PatchClassifierNet, batch: dict,
                          cfg: MethodConfig | ExperimentConfig, epoch: int = 0
                          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its detached parts for one batch.

    model: the network to differentiate through (``core`` or its DDP wrapper); batch: the
    collated items of :class:`tagseg.data.views.TrainingViews` on the right device.
    """
    if isinstance(cfg, ExperimentConfig):
        cfg = cfg.method
    images, labels = batch["image"], batch["labels"].float()
    b = images.shape[0]
    use_et = cfg.et_weight > 0
    if use_et:
        mosaics, tile_idx = build_mosaic(batch["view_b"])
        out = model(torch.cat([images, mosaics.to(images.dtype)]))
        logits, mosaic_logits = out.logits[:b], out.logits[b:]
        features = out.features[:b]
    else:
        out = model(images)
        logits, features = out.logits, out.features
    z = logits.float().softmax(dim=-1).flatten(1, 2)  # (B, N, K)
    scores = pool_patch_scores(z, cfg.pooling, cfg.topk)
    parts: dict[str, torch.Tensor] = {"mce": multilabel_ce(scores, labels)}
    if cfg.pce_weight > 0:
        parts["pce"] = patch_contrastive_error(features.flatten(1, 2), z, labels, cfg.pce_threshold,
                                               cfg.pce_num_low)
    if use_et:
        target = equivariance_target(eval_mode_probs(core, images), batch["geom_a"], batch["geom_b"], labels, PATCH)
        parts["et"] = equivariance_loss(mosaic_logits.permute(0, 3, 1, 2), tile_idx, target)
    parts["l2"] = l2_penalty(core.classifier.weight, cfg.l2_weight)
    total = parts["mce"] + parts["l2"]
    if "pce" in parts:
        total = total + cfg.pce_weight * parts["pce"]
    if "et" in parts:
        total = total + cfg.et_weight * parts["et"]
    return total, {k: v.detach() for k, v in parts.items()}


def _build(cfg: ExperimentConfig, num_classes: int) -> PatchClassifierNet:
    return build_patch_classifier(cfg.model, num_classes, cfg.data.image_size)


def _merged_probs(core: PatchClassifierNet, image: torch.Tensor, labels: np.ndarray, cfg: PseudoConfig) -> torch.Tensor:
    from tagseg.pseudo.inference import patch_merged_probabilities

    return patch_merged_probabilities(core, image, labels, cfg)


register_family(Family("patch", "tagseg.patch_classifier/1", _build, patch_classifier_loss, _merged_probs))
