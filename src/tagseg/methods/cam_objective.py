"""The CAM family (METHODS.md §2): training objective with switchable add-ons, and CAM pseudo-masks.

Loss: L = L_cls, the multi-label soft-margin loss of GAP(O) (+ the learnt class prior b with
``cam.class_prior``, an offset of the image logits that never enters O) over the K−1 foreground classes, plus
the terms of the enabled add-ons (:mod:`tagseg.addons`, METHODS.md §2-§4). The family offers them
:data:`CAM_CAPABILITIES`: their extra views run with view 1 in one forward pass, their modules run
on every view's encoder features (an add-on CAM head's maps become ``cams_aggregated``), and an
add-on may replace or re-weight L_cls (``LossContext.base``), which then stands in the total for it.

Pseudo-masks: ReLU of the CAMs, summed over scales and flips after bilinear upsampling to the
image, each present class divided by its maximum, absent classes 0, background a constant
``pseudo.bg_threshold``; the class scores are divided by their sum per pixel so they can feed a
CRF, and the pseudo-mask is their argmax (ties go to the lower class index, i.e. background).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tagseg.addons.registry import (
    AUX_CAM_HEAD, CAM_LOGITS, FEATURES, SCORE_MAPS, SHARED_VIEWS, VIEW_HEADS, WHOLE_CLASS_LOSS, BuildContext,
    LossContext, addon_loss_terms, attach_addons, cam_head_keys, enabled_addons, extra_views,
)
from tagseg.config import ExperimentConfig
from tagseg.errors import ConfigError
from tagseg.methods.family import Family
from tagseg.models.cam_net import CAMNet
from tagseg.models.encoder import PatchEncoder

NORM_EPS = 1e-5

# what the CAM family offers add-ons: raw CAM logits of view 1 and encoder features, add-on views
# and view heads run in its one forward pass, an add-on CAM head whose maps masks may use, and one
# classification loss (soft-margin of GAP(O)) that add-ons may replace or re-weight
CAM_CAPABILITIES = frozenset({SCORE_MAPS, FEATURES, CAM_LOGITS, SHARED_VIEWS, VIEW_HEADS, AUX_CAM_HEAD,
                              WHOLE_CLASS_LOSS})


def cam_classification_loss(cams: Tensor, labels: Tensor, prior: Optional[Tensor] = None) -> Tensor:
    """Multi-label soft-margin loss of GAP(cams): cams (B, K−1, h, w) logits, labels (B, K) with
    background at 0 -> mean over batch and the K−1 classes of BCE(t_c, sigmoid(mean_hw cams_c + b_c)),
    b the learnt class prior (K−1,) or 0 (``cam.class_prior=none``, the official code's head)."""
    logits = cams.float().mean(dim=(2, 3))
    if prior is not None:
        logits = logits + prior.float()
    return F.multilabel_soft_margin_loss(logits, labels[:, 1:].float())


def tag_frequencies(labels: np.ndarray) -> Tensor:
    """labels (N, K) multi-hot with background at 0 -> each foreground class's frequency (K−1,),
    smoothed as (count + 0.5) / (N + 1) so that a class seen in no image or in every one stays
    inside (0, 1) (its log-odds, the starting prior of ``cam.class_prior=tags``, stay finite)."""
    fg = np.asarray(labels, dtype=np.float64)[:, 1:] > 0.5
    return torch.as_tensor((fg.sum(axis=0) + 0.5) / (fg.shape[0] + 1), dtype=torch.float32)


def cam_family_loss(model: nn.Module, core: CAMNet, batch: dict, cfg: ExperimentConfig, epoch: int = 0
                    ) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss and its detached parts for one batch (see the module docstring).

    model: what to differentiate through (``core`` or its DDP wrapper); batch: collated items of
    :class:`tagseg.data.views.TrainingViews` (image (B, 3, S, S) in [0, 1], labels (B, K), index (B,)).
    Parts: 'cls' (soft-margin), and those of the enabled add-ons.
    """
    images, labels = batch["image"], batch["labels"].float()
    views, where = extra_views(cfg, images)
    if views:
        out, *view_outputs = model(images, *views)
    else:
        out, view_outputs = model(images), []
    cams = out.cams.float()
    parts: dict[str, Tensor] = {"cls": cam_classification_loss(cams, labels, core.class_prior)}
    total = parts["cls"]
    if enabled_addons(cfg):
        ctx = LossContext(model=model, core=core, batch=batch, epoch=epoch, maps=cams, features=out.features,
                          base=parts["cls"], output=out, capabilities=CAM_CAPABILITIES,
                          view_label_maps=lambda o: o.cams)
        extra = addon_loss_terms(cfg, ctx, parts, view_outputs, where)
        total = ctx.base if extra is None else ctx.base + extra
    return total, {k: v.detach() for k, v in parts.items()}


def build_cam_net(cfg: ExperimentConfig, num_classes: int) -> CAMNet:
    """The CAM network of ``cfg`` (model.encoder/weights, cam.output_stride) with the modules of its
    enabled add-ons; ``cam.inference_cam=auto`` uses an add-on CAM head's maps when one is attached."""
    m = cfg.model
    encoder = PatchEncoder(m.encoder, weights=m.weights, pretrained=m.pretrained, image_size=cfg.data.image_size,
                           output_stride=cfg.cam.output_stride, cnn_features=m.cnn_features)
    net = CAMNet(encoder, num_classes, class_prior=cfg.cam.class_prior != "none")
    attach_addons(cfg, net, BuildContext(num_classes=num_classes, feature_dim=encoder.out_channels,
                                         last_epoch=cfg.train.epochs - 1, seed=cfg.seed,
                                         capabilities=CAM_CAPABILITIES))
    inference_cam = cfg.cam.inference_cam
    if inference_cam == "auto":
        inference_cam = "aggregated" if net.aux_cam_head() is not None else "base"
    if inference_cam == "aggregated" and net.aux_cam_head() is None:
        raise ConfigError(_needs_cam_head(cfg))
    net.inference_cam = inference_cam
    return net


def validate_cam_family(cfg: ExperimentConfig) -> None:
    """The patch-family loss terms are refused; the aggregated maps need an add-on CAM head."""
    m = cfg.method
    wrong = [f"{k}={v}" for k, v, ok in (("method.pooling", m.pooling, m.pooling == "avg"),
                                         ("method.pce_weight", m.pce_weight, m.pce_weight == 0),
                                         ("method.et_weight", m.et_weight, m.et_weight == 0),
                                         ("method.l2_weight", m.l2_weight, m.l2_weight == 0)) if not ok]
    if wrong:
        raise ConfigError(f"model.family=cam uses GAP and the soft-margin loss only: {', '.join(wrong)} "
                          "(patch-family settings); set method.pooling=avg method.pce_weight=0 method.et_weight=0 "
                          "method.l2_weight=0 (the shipped cam_voc config does)")
    if cfg.cam.inference_cam == "aggregated" and not cam_head_keys(cfg):
        raise ConfigError(_needs_cam_head(cfg))


def _needs_cam_head(cfg: ExperimentConfig) -> str:
    keys = cam_head_keys(cfg, enabled_only=False)
    names = " or ".join(k.split(".")[1].upper() for k in keys) or "an add-on's"
    return (f"cam.inference_cam=aggregated needs the {names} aggregation head: set "
            f"{' or '.join(k + '=true' for k in keys) or 'an add-on CAM head on'}")


# ----------------------------------------------------------------------------- pseudo-masks


def normalise_cams(maps: Tensor, labels: np.ndarray | Tensor) -> Tensor:
    """maps (K−1, H, W) >= 0, labels (K,) -> each present class divided by its maximum (guarded by
    1e-5), absent classes 0: (K−1, H, W) in [0, 1]."""
    t = torch.as_tensor(np.asarray(labels), device=maps.device)[1:] > 0.5
    peak = maps.flatten(1).amax(dim=1).clamp_min(NORM_EPS)
    return maps / peak[:, None, None] * t[:, None, None].to(maps.dtype)


def cam_probabilities(fg: Tensor, bg_threshold: float) -> Tensor:
    """fg (K−1, H, W) normalised CAMs -> (K, H, W): [bg_threshold, fg] divided by its sum per pixel
    (a pixel whose scores are all 0 becomes pure background). Its argmax is the pseudo-mask."""
    bg = torch.full_like(fg[:1], float(bg_threshold))
    scores = torch.cat([bg, fg])
    total = scores.sum(0, keepdim=True)
    empty = total <= 0
    scores[:1] = torch.where(empty, torch.ones_like(bg), scores[:1])
    return scores / torch.where(empty, torch.ones_like(total), total)


def cam_pseudo_mask(fg: Tensor, bg_threshold: float) -> Tensor:
    """The argmax of :func:`cam_probabilities` without building it: (H, W) long, a pixel gets the
    best foreground class when its score exceeds the threshold, else background 0."""
    best, cls = fg.max(dim=0)
    return torch.where(best > bg_threshold, cls + 1, torch.zeros_like(cls))


CAM_FAMILY = Family("cam", "tagseg.cam/1", build_cam_net, cam_family_loss, validate_cam_family,
                    inference="tagseg.inference.cam:cam_merged_probabilities", cam_maps=True,
                    capabilities=CAM_CAPABILITIES)
