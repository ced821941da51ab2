"""The SEAM family (``model.family: seam``): SEAM's siamese training on the CAM network with the
PCM, and PPC / HFPL placed as their official code places them on SEAM.

One batch (YudeWang/SEAM ``train_SEAM.py`` lines 104-142):

- view 1 = the batch images (B, 3, S, S); view 2 = view 1 resized (bilinear, align_corners) by
  ``seam.view2_scale`` = 0.3, snapped down to a multiple of 16 (the encoder needs one; at S = 448
  view 2 is 128 px against the official 134). With PPC on, view 2 is ``addons.ppc.view2_size``
  (usr922/wseg ``contrast_train.py`` builds SEAM's second view at 128 × 128 and uses it for both);
- both views go through :class:`~tagseg.models.seam_net.SEAMNet` in one call; the raw CAMs and the
  PCM-revised maps are upsampled (bilinear, align_corners) to their view's size, a zero
  background channel put in front of the raw CAMs (the official head's background output is
  never read), and :func:`tagseg.methods.seam.seam_losses` gives cls, rvmin, ER and ECR;
- HFPL (arvijj/hfpl ``train_cam_voc.py`` lines 141-170): ISL on view 1's raw CAM logits replaces
  view 1's classification loss by (1−λ)·L_cls1 + λ·ISL *before* SEAM halves it; FSL on view 1's
  raw CAM logits (max-normalised, background 1 − max) is added with ``fsl_weight``;
- PPC (usr922/wseg ``contrast_train.py`` lines 179-392): prototypes and pseudo labels from each
  view's PCM-revised maps on the CAM grid (background replaced by ``addons.ppc.bg_score``), pixel
  embeddings from the projector on each view's encoder features; L_PPC is added with weight 1.

Total: (L_cls1' + L_cls2)/2 + (L_rvmin1 + L_rvmin2)/2 + L_ER + L_ECR [+ fsl_weight·L_FS] [+ L_PPC].
RCA has no official placement on SEAM and is refused.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tagseg.addons.hfpl import ADDON as HFPL
from tagseg.addons.ppc import ppc_loss
from tagseg.addons.registry import BuildContext, LossContext, attach_addons, resolve_addons
from tagseg.config import ExperimentConfig
from tagseg.errors import ConfigError
from tagseg.methods.cam_objective import validate_cam_family
from tagseg.methods.family import Family
from tagseg.methods.seam import seam_losses
from tagseg.models.encoder import PatchEncoder
from tagseg.models.seam_net import SEAMNet

SNAP = 16


def seam_view2(images: Tensor, scale: float, size: int | None = None) -> Tensor:
    """View 2: images (B, 3, H, W) resized (bilinear, align_corners) to ``size`` px square, or by
    ``scale`` with each side snapped down to a multiple of 16 (at least 16)."""
    if size is None:
        h, w = (max(SNAP, int(d * scale) // SNAP * SNAP) for d in images.shape[-2:])
    else:
        h = w = size
    return F.interpolate(images, size=(h, w), mode="bilinear", align_corners=True)


def _full(maps: Tensor, size: tuple[int, int], add_background: bool) -> Tensor:
    if add_background:
        maps = torch.cat([torch.zeros_like(maps[:, :1]), maps], dim=1)
    return F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=True)


def seam_family_loss(model: nn.Module, core: SEAMNet, batch: dict, cfg: ExperimentConfig, epoch: int = 0
                     ) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss and its detached parts for one batch (see the module docstring). Parts: 'cls'
    ((cls1' + cls2)/2), 'rvmin', 'er', 'ecr', and 'isl', 'fsl', 'ppc' when on."""
    images, labels = batch["image"], batch["labels"].float()
    addons = resolve_addons(cfg)
    ppc, hfpl = addons.ppc, addons.hfpl
    view2 = seam_view2(images, cfg.seam.view2_scale, ppc.view2_size if ppc.enabled else None)
    out1, out2 = model(images, view2)
    size1, size2 = tuple(images.shape[-2:]), tuple(view2.shape[-2:])
    p = seam_losses(_full(out1.cams, size1, True), _full(out1.cams_revised, size1, False),
                    _full(out2.cams, size2, True), _full(out2.cams_revised, size2, False),
                    labels, cfg.seam.ecr_fraction)
    cls1 = p["cls1"]
    parts: dict[str, Tensor] = {}
    fsl_term = None
    if hfpl.isl or hfpl.fsl:
        ctx = LossContext(model=model, core=core, batch=batch, epoch=epoch, maps=out1.cams.float(),
                          features=out1.features, base=cls1, output=out1)
        if hfpl.isl:  # replaces view 1's classification loss only
            isl_parts, isl_extra = HFPL.loss_terms("cam", ctx, replace(hfpl, fsl=False))
            parts.update(isl_parts)
            cls1 = cls1 + isl_extra
        if hfpl.fsl:
            fsl_parts, fsl_term = HFPL.loss_terms("cam", ctx, replace(hfpl, isl=False))
            parts.update(fsl_parts)
    parts["cls"] = (cls1 + p["cls2"]) / 2
    parts["rvmin"] = (p["rvmin1"] + p["rvmin2"]) / 2
    parts["er"], parts["ecr"] = p["er"], p["ecr"]
    total = parts["cls"] + parts["rvmin"] + parts["er"] + parts["ecr"]
    if fsl_term is not None:
        total = total + fsl_term
    if ppc.enabled:
        parts["ppc"], _ = ppc_loss(out1.embeddings.float(), out1.cams_revised[:, 1:].float(),
                                   out2.embeddings.float(), out2.cams_revised[:, 1:].float(), labels, ppc)
        total = total + parts["ppc"]
    return total, {k: v.detach() for k, v in parts.items()}


def build_seam_net(cfg: ExperimentConfig, num_classes: int) -> SEAMNet:
    """SEAM's network for ``cfg`` (model.encoder/weights, cam.output_stride, seam.head_dropout), with
    PPC's projector when PPC is on (attached as on the CAM network)."""
    m = cfg.model
    encoder = PatchEncoder(m.encoder, weights=m.weights, pretrained=m.pretrained, image_size=cfg.data.image_size,
                           output_stride=cfg.cam.output_stride, cnn_features=m.cnn_features)
    net = SEAMNet(encoder, num_classes, head_dropout=cfg.seam.head_dropout)
    attach_addons(cfg, "cam", net, BuildContext(num_classes=num_classes, feature_dim=encoder.out_channels,
                                                last_epoch=cfg.train.epochs - 1, seed=cfg.seed))
    return net


def validate_seam_family(cfg: ExperimentConfig) -> None:
    """The CAM family's checks; the PCM-revised maps are SEAM's inference maps (no RCA head)."""
    validate_cam_family(cfg)
    if cfg.cam.inference_cam == "aggregated":
        raise ConfigError("cam.inference_cam=aggregated: model.family=seam infers from the PCM-revised maps")


SEAM_FAMILY = Family("seam", "tagseg.seam/1", build_seam_net, seam_family_loss, validate_seam_family,
                     inference="tagseg.inference.cam:cam_merged_probabilities",  # from its PCM-revised maps
                     cam_maps=True)
