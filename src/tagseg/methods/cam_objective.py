"""The CAM family (METHODS.md §2): training objective with switchable add-ons, and CAM pseudo-masks.

Loss (all terms optional except the first):

    L = L_cls + [fsl_weight · L_fs] + [L_PPC] + [aux_weight · L_CE(GAP(P)) + contrast_weight · L_RM]

L_cls is the multi-label soft-margin loss of GAP(O) over the K−1 foreground classes; with ISL on
it becomes (1−λ)·soft-margin + λ·ISL (METHODS.md §3). L_PPC (§2) compares view 1 with view 2 =
view 1 resized to ``addons.ppc.view2_size`` px; both views go through the network in one call.
RCA (§4) adds the aggregation head's loss and the region mixup contrast L_RM (from
``contrast_start_epoch`` on), then writes the batch's regions into the memory bank (image id =
dataset index; a region enters when sigmoid(GAP(O)) of its class exceeds ν).

Pseudo-masks: ReLU of the CAMs, summed over scales and flips after bilinear upsampling to the
image, each present class divided by its maximum, absent classes 0, background a constant
``pseudo.bg_threshold``; the class scores are divided by their sum per pixel so they can feed a
CRF, and the pseudo-mask is their argmax (ties go to the lower class index, i.e. background).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tagseg.addons.hfpl import feature_similarity_loss, importance_sampling_loss
from tagseg.addons.ppc import make_ppc_view2, ppc_loss
from tagseg.addons.rca import RCAConfig, RegionMemoryBank, gap_multilabel_loss, region_embeddings, region_mixup_loss
from tagseg.addons.settings import ppc_settings, rca_settings
from tagseg.config import ExperimentConfig, PseudoConfig
from tagseg.errors import TagsegError
from tagseg.families import Family, register_family
from tagseg.models.cam_net import CAMNet, build_cam_net

NORM_EPS = 1e-5


def cam_classification_loss(cams: Tensor, labels: Tensor) -> Tensor:
    """Multi-label soft-margin loss of GAP(cams): cams (B, K−1, h, w) logits, labels (B, K) with
    background at 0 -> mean over batch and the K−1 classes of BCE(t_c, sigmoid(mean_hw cams_c))."""
    return F.multilabel_soft_margin_loss(cams.float().mean(dim=(2, 3)), labels[:, 1:].float())


def rca_terms(memory: RegionMemoryBank, cams: Tensor, cams_aggregated: Tensor, features: Tensor,
              labels: Tensor, image_ids: Tensor, epoch: int, cfg: RCAConfig, *, has_background: bool = False,
              image_scores: Tensor | None = None) -> dict[str, Tensor]:
    """RCA's loss terms for one batch, then the memory-bank update with the batch's regions.

    cams (B, C, h, w) give the regions (C = K−1 foreground maps, or K maps with
    ``has_background``); features (B, D, h, w) are pooled over them; cams_aggregated (B, C, h, w)
    or None (no aggregation head). image_scores (B, C) in [0, 1] decide which regions enter the
    bank (default sigmoid(GAP(cams))). Returns 'rca_aux' (absent without an aggregation head) and
    'rca_rm' (0 before ``cfg.contrast_start_epoch``). L_RM is computed against the bank as it was
    before this batch's update.
    """
    terms: dict[str, Tensor] = {}
    if cams_aggregated is not None:
        terms["rca_aux"] = gap_multilabel_loss(cams_aggregated.float(), labels, has_background=has_background)
    regions = region_embeddings(features.float(), cams.float(), labels, has_background=has_background)
    if epoch >= cfg.contrast_start_epoch:
        terms["rca_rm"] = region_mixup_loss(regions, memory, cfg.temperature, alpha=cfg.mixup_alpha)
    else:
        terms["rca_rm"] = features.new_zeros((), dtype=torch.float32)
    with torch.no_grad():
        if image_scores is None:
            image_scores = torch.sigmoid(cams.float().mean(dim=(2, 3)))
        scores = image_scores[regions.batch_index, regions.channels]
        memory.update(regions.embeddings.detach(), regions.channels,
                      image_ids.to(regions.channels.device)[regions.batch_index], scores)
    return terms


def batch_image_ids(batch: dict) -> Tensor:
    """The dataset indices of a batch (RCA's image ids), (B,) long."""
    ids = batch.get("index")
    if ids is None:
        raise TagsegError("RCA needs the dataset index of every image in the batch (item 'index')")
    return torch.as_tensor(ids, dtype=torch.long)


def cam_family_loss(model: nn.Module, core: CAMNet, batch: dict, cfg: ExperimentConfig, epoch: int = 0
                    ) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss and its detached parts for one batch (see the module docstring).

    model: what to differentiate through (``core`` or its DDP wrapper); batch: collated items of
    :class:`tagseg.data.views.TrainingViews` (image (B, 3, S, S) in [0, 1], labels (B, K), index (B,)).
    Parts: 'cls' (soft-margin), and when on 'isl', 'fsl', 'ppc' (its weighted total), 'rca_aux', 'rca_rm'.
    """
    a = cfg.addons
    images, labels = batch["image"], batch["labels"].float()
    if a.ppc.enabled:
        out, out2 = model(images, make_ppc_view2(images, a.ppc.view2_size))
    else:
        out, out2 = model(images), None
    cams = out.cams.float()
    parts: dict[str, Tensor] = {"cls": cam_classification_loss(cams, labels)}
    cls = parts["cls"]
    if a.hfpl.isl:
        parts["isl"] = importance_sampling_loss(cams, labels, a.hfpl.n_samples)
        cls = (1.0 - a.hfpl.lam) * parts["cls"] + a.hfpl.lam * parts["isl"]
    total = cls
    if a.hfpl.fsl:
        parts["fsl"] = feature_similarity_loss(cams, labels, images, a.hfpl.sigma, a.hfpl.mu, a.hfpl.block,
                                               a.hfpl.window)
        total = total + a.hfpl.fsl_weight * parts["fsl"]
    if a.ppc.enabled:
        parts["ppc"], _ = ppc_loss(out.embeddings.float(), cams, out2.embeddings.float(), out2.cams.float(),
                                   labels, ppc_settings(a.ppc))
        total = total + parts["ppc"]
    if a.rca.enabled:
        rca = rca_settings(a.rca)
        parts.update(rca_terms(core.memory, cams, out.cams_aggregated, out.features, labels,
                               batch_image_ids(batch), epoch, rca))
        total = total + rca.aux_weight * parts["rca_aux"] + rca.contrast_weight * parts["rca_rm"]
    return total, {k: v.detach() for k, v in parts.items()}


# ----------------------------------------------------------------------------- pseudo-masks


def _side(base: int, scale: float) -> int:
    return max(16, int(round(base * scale / 16)) * 16)


@torch.no_grad()
def cam_maps(core: CAMNet, image: Tensor, size: int, scales: Sequence[float] = (1.0,), flip: bool = False
             ) -> Tensor:
    """ReLU CAMs (K−1, H, W) of ``image`` (3, H, W) in [0, 1]: for each scale the image resized to a
    square of ``size·scale`` px (multiple of 16), with ``flip`` also mirrored; every map is
    upsampled (bilinear) to H×W and the maps are summed."""
    h, w = image.shape[-2:]
    acc = None
    for s in scales:
        side = _side(size, s)
        x = F.interpolate(image[None].float(), size=(side, side), mode="bilinear", align_corners=False,
                          antialias=True)
        batch = torch.cat([x, x.flip(-1)]) if flip else x
        maps = F.relu(core.inference_maps(batch).float())
        if flip:
            maps = torch.stack([maps[0], maps[1].flip(-1)])
        maps = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False).sum(0)
        acc = maps if acc is None else acc + maps
    return acc


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


@torch.no_grad()
def normalised_cams_for_image(core: CAMNet, image: Tensor, labels: np.ndarray, cfg: PseudoConfig) -> Tensor:
    """(K−1, H, W) normalised CAMs of one image at ``cfg.image_size`` / ``scales`` / ``flip``."""
    return normalise_cams(cam_maps(core, image, cfg.image_size, cfg.scales, cfg.flip), labels)


@torch.no_grad()
def cam_merged_probs(core: CAMNet, image: Tensor, labels: np.ndarray, cfg: PseudoConfig) -> Tensor:
    """Family hook: (K, H, W) class probabilities of one image (see the module docstring)."""
    return cam_probabilities(normalised_cams_for_image(core, image, labels, cfg), cfg.bg_threshold)


register_family(Family("cam", "tagseg.cam/1", build_cam_net, cam_family_loss, cam_merged_probs))
