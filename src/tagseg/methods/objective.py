"""The full training objective of the patch-classifier family (METHODS.md §1, "Totals").

ViT-PCM: MCE(max) + L_ET + L2. TKP-PCL: MCE(topk) + λ·PCE + L_ET + L2. Baseline: MCE(avg) + L2
(+ whatever else the config switches on). View A and the L_ET mosaic (both S×S) go through the
network in one batched forward pass; the L_ET target comes from a separate eval-mode,
no-gradient pass over view A.

Add-ons (``addons.*`` of an ExperimentConfig, :mod:`tagseg.addons`; all off leaves the loss above
untouched) add their terms through the add-on registry. The family offers them
:data:`PATCH_CAPABILITIES`: the patch probabilities Z of view A (background included) as score
maps, the patch features f (B, F, h, w) for their modules (which they run themselves: this
network runs no view heads, and an add-on that needs a second view runs a second forward pass),
and MCE as the classification loss they may replace or re-weight.
"""

from __future__ import annotations

import torch
from torch import nn

from tagseg.addons.registry import (
    FEATURES, SCORE_MAPS, WHOLE_CLASS_LOSS, BuildContext, LossContext, addon_loss_terms, attach_addons, enabled_addons,
)
from tagseg.config import ExperimentConfig, MethodConfig
from tagseg.errors import ConfigError
from tagseg.methods.family import Family
from tagseg.methods.equivariance import build_mosaic, equivariance_loss, equivariance_target
from tagseg.methods.losses import l2_penalty, multilabel_ce
from tagseg.methods.pce import patch_contrastive_error
from tagseg.methods.pooling import pool_patch_scores
from tagseg.models.encoder import PATCH_STRIDE
from tagseg.models.patch_classifier import PatchClassifierNet, build_patch_classifier

PATCH_CAPABILITIES = frozenset({SCORE_MAPS, FEATURES, WHOLE_CLASS_LOSS})


@torch.no_grad()
def eval_mode_probs(core: PatchClassifierNet, images: torch.Tensor,
                    grid: torch.Tensor | None = None) -> torch.Tensor:
    """Patch probabilities (B, K, h, w) in eval mode, no gradient; restores the training mode.

    grid: the encoder output (B, h, w, D) of ``images`` from the training pass; reused when the
    encoder is frozen (then its output is the same in both modes), saving a backbone pass.
    """
    modes = [m.training for m in core.modules()]
    core.eval()
    if grid is not None and core.encoder_is_frozen():
        probs = core.head(grid.detach()).probs.permute(0, 3, 1, 2)
    else:
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
    experiment = cfg if isinstance(cfg, ExperimentConfig) and enabled_addons(cfg) else None
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
                                               cfg.pce_num_low, reduction=cfg.pce_reduction)
        # how much the weighted PCE weighs against MCE (history.jsonl: per-epoch mean of this ratio)
        parts["pce_mce_ratio"] = (cfg.pce_weight * parts["pce"] / parts["mce"].clamp_min(1e-12)).detach()
    if use_et:
        grid_a = out.grid[:b] if out.grid is not None else None
        target = equivariance_target(eval_mode_probs(core, images, grid_a), batch["geom_a"], batch["geom_b"],
                                     labels, PATCH_FAMILY.patch_size, cfg.et_align_corners)
        parts["et"] = equivariance_loss(mosaic_logits.permute(0, 3, 1, 2), tile_idx, target)
    parts["l2"] = l2_penalty(core.classifier.weight, cfg.l2_weight)
    total = parts["mce"] + parts["l2"]
    if "pce" in parts:
        total = total + cfg.pce_weight * parts["pce"]
    if "et" in parts:
        total = total + cfg.et_weight * parts["et"]
    if experiment is not None:
        b, h, w = features.shape[:3]
        ctx = LossContext(model=model, core=core, batch=batch, epoch=epoch,
                          maps=z.transpose(1, 2).reshape(b, -1, h, w), features=features.permute(0, 3, 1, 2),
                          base=parts["mce"], output=out, scores=scores,
                          class_loss=lambda s: multilabel_ce(s, labels), capabilities=PATCH_CAPABILITIES,
                          view_label_maps=lambda o: o.logits.float().softmax(dim=-1).permute(0, 3, 1, 2),
                          view_features=lambda o: o.features.permute(0, 3, 1, 2))
        extra = addon_loss_terms(experiment, ctx, parts)
        if ctx.base is not parts["mce"]:  # an add-on replaced or re-weighted MCE
            total = total + (ctx.base - parts["mce"])
        if extra is not None:
            total = total + extra
    return total, {k: v.detach() for k, v in parts.items()}


def build_patch_family(cfg: ExperimentConfig, num_classes: int) -> PatchClassifierNet:
    """The patch classifier of ``cfg`` with the modules of its enabled add-ons (on the patch features f)."""
    net = build_patch_classifier(cfg.model, num_classes, cfg.data.image_size)
    ctx = BuildContext(num_classes=num_classes, feature_dim=net.classifier.in_features,
                       last_epoch=cfg.train.epochs - 1, seed=cfg.seed, capabilities=PATCH_CAPABILITIES)
    return attach_addons(cfg, net, ctx)


def validate_patch_family(cfg: ExperimentConfig) -> None:
    """The CAM-only settings are refused on the patch family."""
    c = cfg.cam
    if c.output_stride != PATCH_STRIDE:
        raise ConfigError(f"cam.output_stride={c.output_stride}: only the CAM family (model.family=cam) "
                          "has a stride-8 variant")
    if c.inference_cam == "aggregated":
        raise ConfigError("cam.inference_cam=aggregated: only the CAM family has an aggregation head")


PATCH_FAMILY = Family("patch", "tagseg.patch_classifier/1", build_patch_family, patch_classifier_loss,
                      validate_patch_family, inference="tagseg.inference.patch:patch_merged_probabilities",
                      capabilities=PATCH_CAPABILITIES)
