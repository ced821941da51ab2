"""The full training objective of the patch-classifier family (METHODS.md §1, "Totals").

ViT-PCM: MCE(max) + L_ET + L2. TKP-PCL: MCE(topk) + λ·PCE + L_ET + L2. Baseline: MCE(avg) + L2
(+ whatever else the config switches on). View A and the L_ET mosaic (both S×S) go through the
network in one batched forward pass; the L_ET target comes from a separate eval-mode,
no-gradient pass over view A.

Add-ons (``addons.*`` of an ExperimentConfig; all off leaves the loss above untouched):

- ISL (``addons.hfpl.isl``): importance sampling as a pooling over the patch scores Z:
  MCE becomes (1−λ)·MCE(pooling) + λ·MCE(importance pooling), N samples per image and class.
- PPC (``addons.ppc.enabled``): pixel-to-prototype contrast on the projected patch features f
  of view A and of view 2 (view A resized to ``view2_size`` px, a second forward pass), with Z
  (background included) as the score maps; its weighted total is added.
- RCA (``addons.rca.enabled``): the region mixup contrast on patch features (regions from the
  foreground maps of Z, bank entry when the pooled image score exceeds ν), weighted by
  ``contrast_weight`` from ``contrast_start_epoch`` on. No aggregation head in this family.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tagseg.config import AddonsConfig, ExperimentConfig, MethodConfig, PseudoConfig
from tagseg.families import Family, register_family
from tagseg.methods.equivariance import build_mosaic, equivariance_loss, equivariance_target
from tagseg.methods.losses import l2_penalty, multilabel_ce
from tagseg.methods.pce import patch_contrastive_error
from tagseg.methods.pooling import pool_patch_scores
from tagseg.models.patch_classifier import PatchClassifierNet, build_patch_classifier

PATCH = 16


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
    addons = None
    if isinstance(cfg, ExperimentConfig):
        addons = cfg.addons if any_patch_addon(cfg.addons) else None
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
        grid_a = out.grid[:b] if out.grid is not None else None
        target = equivariance_target(eval_mode_probs(core, images, grid_a), batch["geom_a"], batch["geom_b"],
                                     labels, PATCH)
        parts["et"] = equivariance_loss(mosaic_logits.permute(0, 3, 1, 2), tile_idx, target)
    parts["l2"] = l2_penalty(core.classifier.weight, cfg.l2_weight)
    total = parts["mce"] + parts["l2"]
    if "pce" in parts:
        total = total + cfg.pce_weight * parts["pce"]
    if "et" in parts:
        total = total + cfg.et_weight * parts["et"]
    if addons is not None:
        total = total + patch_addon_terms(model, core, batch, addons, z, scores, features, parts, epoch)
    return total, {k: v.detach() for k, v in parts.items()}


def any_patch_addon(a: AddonsConfig) -> bool:
    return a.hfpl.isl or a.ppc.enabled or a.rca.enabled


def patch_addon_terms(model: nn.Module, core: PatchClassifierNet, batch: dict, a: AddonsConfig, z: torch.Tensor,
                      scores: torch.Tensor, features: torch.Tensor, parts: dict[str, torch.Tensor],
                      epoch: int) -> torch.Tensor:
    """What the enabled add-ons add to the total; their parts go into ``parts``.

    z (B, h·w, K) patch probabilities of view A, scores (B, K) its pooled image scores, features
    (B, h, w, F) its patch features f.
    """
    from tagseg.addons.hfpl import importance_pooling
    from tagseg.addons.ppc import make_ppc_view2, ppc_loss
    from tagseg.addons.settings import ppc_settings, rca_settings
    from tagseg.methods.cam_objective import batch_image_ids, rca_terms

    images, labels = batch["image"], batch["labels"].float()
    b, h, w = features.shape[:3]
    z_maps = z.transpose(1, 2).reshape(b, -1, h, w)  # (B, K, h, w)
    extra = z.new_zeros(())
    if a.hfpl.isl:
        parts["isl"] = multilabel_ce(importance_pooling(z_maps, a.hfpl.n_samples), labels)
        extra = extra + a.hfpl.lam * (parts["isl"] - parts["mce"])  # MCE -> (1−λ)·MCE + λ·ISL
    if a.ppc.enabled:
        out2 = model(make_ppc_view2(images, a.ppc.view2_size))
        z2 = out2.logits.float().softmax(dim=-1).permute(0, 3, 1, 2)
        v1 = core.ppc_projector(features.permute(0, 3, 1, 2))
        v2 = core.ppc_projector(out2.features.permute(0, 3, 1, 2))
        parts["ppc"], _ = ppc_loss(v1.float(), z_maps, v2.float(), z2, labels, ppc_settings(a.ppc),
                                   has_background=True)
        extra = extra + parts["ppc"]
    if a.rca.enabled:
        rca = rca_settings(a.rca)
        terms = rca_terms(core.rca_memory, z_maps[:, 1:], None, features.permute(0, 3, 1, 2), labels,
                          batch_image_ids(batch), epoch, rca, image_scores=scores[:, 1:].detach().float())
        parts["rca_rm"] = terms["rca_rm"]
        extra = extra + rca.contrast_weight * parts["rca_rm"]
    return extra


def _build(cfg: ExperimentConfig, num_classes: int) -> PatchClassifierNet:
    if cfg.addons.ppc.enabled or cfg.addons.rca.enabled:  # add-ons with modules of their own
        from tagseg.models.patch_addons import build_patch_classifier_with_addons

        return build_patch_classifier_with_addons(cfg, num_classes)
    return build_patch_classifier(cfg.model, num_classes, cfg.data.image_size)


def _merged_probs(core: PatchClassifierNet, image: torch.Tensor, labels: np.ndarray, cfg: PseudoConfig) -> torch.Tensor:
    from tagseg.inference.patch import patch_merged_probabilities

    return patch_merged_probabilities(core, image, labels, cfg)


register_family(Family("patch", "tagseg.patch_classifier/1", _build, patch_classifier_loss, _merged_probs))
