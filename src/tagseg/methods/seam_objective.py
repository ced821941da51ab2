"""The SEAM family (``model.family: seam``): SEAM's siamese training on the CAM network with the
PCM; add-ons plug in through the capabilities it offers (:data:`SEAM_CAPABILITIES`).

One batch (YudeWang/SEAM ``train_SEAM.py`` lines 104-142):

- view 1 = the batch images (B, 3, S, S); view 2 = view 1 resized (bilinear, align_corners) by
  ``seam.view2_scale`` = 0.3, snapped down to a multiple of the family's patch size (the encoder
  needs one; at S = 448 view 2 is 128 px against the official 134). When an add-on asks for an
  extra view, view 2 is made at that view's size instead and serves both (SEAM runs two views);
- both views go through :class:`~tagseg.models.seam_net.SEAMNet` in one call; the raw CAMs and the
  PCM-revised maps are upsampled (bilinear, align_corners) to their view's size, a zero
  background channel put in front of the raw CAMs (the official head's background output is
  never read), and :func:`tagseg.methods.seam.seam_losses` gives cls, rvmin, ER and ECR;
- add-ons see view 1's raw CAM logits as score maps, each view's PCM-revised foreground maps as
  label maps, the encoder features of each view, and view 1's classification loss as the loss
  they may replace (SEAM then halves it with view 2's); their other terms are added with weight 1.

Total: (L_cls1' + L_cls2)/2 + (L_rvmin1 + L_rvmin2)/2 + L_ER + L_ECR [+ the add-ons' terms]. With
``cam.class_prior`` (tagseg's, not the official SEAM's) both classification terms add the learnt
class prior to their image logits, as the CAM family's does.
SEAM's classification loss is the mean over its two views, so it does not offer the whole of it
to add-ons (no WHOLE_CLASS_LOSS) nor an add-on CAM head: it infers from the PCM-revised maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tagseg.addons.registry import (
    CAM_LOGITS, FEATURES, SCORE_MAPS, SHARED_VIEWS, VIEW_HEADS, BuildContext, LossContext, addon_loss_terms,
    attach_addons, enabled_addons, extra_views,
)
from tagseg.config import ExperimentConfig
from tagseg.errors import ConfigError
from tagseg.methods.cam_objective import validate_cam_family
from tagseg.methods.family import Family
from tagseg.methods.seam import seam_losses
from tagseg.models.encoder import PATCH_STRIDE, PatchEncoder
from tagseg.models.seam_net import SEAMNet

SEAM_CAPABILITIES = frozenset({SCORE_MAPS, FEATURES, CAM_LOGITS, SHARED_VIEWS, VIEW_HEADS})
SNAP = PATCH_STRIDE


def seam_view2(images: Tensor, scale: float, size: int | None = None, snap: int = SNAP) -> Tensor:
    """View 2: images (B, 3, H, W) resized (bilinear, align_corners) to ``size`` px square, or by
    ``scale`` with each side snapped down to a multiple of ``snap`` px (at least ``snap``)."""
    if size is None:
        h, w = (max(snap, int(d * scale) // snap * snap) for d in images.shape[-2:])
    else:
        h = w = size
    return F.interpolate(images, size=(h, w), mode="bilinear", align_corners=True)


def _full(maps: Tensor, size: tuple[int, int], add_background: bool) -> Tensor:
    if add_background:
        maps = torch.cat([torch.zeros_like(maps[:, :1]), maps], dim=1)
    return F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=True)


def _asked_side(views: list[Tensor]) -> int | None:
    """The side of the square view the add-ons asked for (None: none asked); one size only."""
    sides = {tuple(v.shape[-2:]) for v in views}
    if not sides:
        return None
    if len(sides) > 1 or any(h != w for h, w in sides):
        raise ConfigError(f"model.family=seam runs one second view; the add-ons ask for views of sizes {sorted(sides)}")
    return next(iter(sides))[0]


def seam_family_loss(model: nn.Module, core: SEAMNet, batch: dict, cfg: ExperimentConfig, epoch: int = 0
                     ) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss and its detached parts for one batch (see the module docstring). Parts: 'cls'
    ((cls1' + cls2)/2), 'rvmin', 'er', 'ecr', and those of the enabled add-ons."""
    images, labels = batch["image"], batch["labels"].float()
    views, where = extra_views(cfg, images)
    view2 = seam_view2(images, cfg.seam.view2_scale, _asked_side(views), snap=SEAM_FAMILY.patch_size)
    out1, out2 = model(images, view2)
    size1, size2 = tuple(images.shape[-2:]), tuple(view2.shape[-2:])
    p = seam_losses(_full(out1.cams, size1, True), _full(out1.cams_revised, size1, False),
                    _full(out2.cams, size2, True), _full(out2.cams_revised, size2, False),
                    labels, cfg.seam.ecr_fraction, prior=core.class_prior)
    cls1 = p["cls1"]
    parts: dict[str, Tensor] = {}
    extra = None
    if enabled_addons(cfg):
        ctx = LossContext(model=model, core=core, batch=batch, epoch=epoch, maps=out1.cams.float(),
                          features=out1.features, base=cls1, output=out1, capabilities=SEAM_CAPABILITIES,
                          label_maps=out1.cams_revised[:, 1:], view_label_maps=lambda o: o.cams_revised[:, 1:])
        extra = addon_loss_terms(cfg, ctx, parts, [out2] * len(views), where)
        cls1 = ctx.base  # view 1's classification loss as the add-ons replaced it
    parts["cls"] = (cls1 + p["cls2"]) / 2
    parts["rvmin"] = (p["rvmin1"] + p["rvmin2"]) / 2
    parts["er"], parts["ecr"] = p["er"], p["ecr"]
    total = parts["cls"] + parts["rvmin"] + parts["er"] + parts["ecr"]
    if extra is not None:
        total = total + extra
    return total, {k: v.detach() for k, v in parts.items()}


def build_seam_net(cfg: ExperimentConfig, num_classes: int) -> SEAMNet:
    """SEAM's network for ``cfg`` (model.encoder/weights, cam.output_stride, seam.head_dropout,
    cam.class_prior), with the modules of its enabled add-ons in its container."""
    m = cfg.model
    encoder = PatchEncoder(m.encoder, weights=m.weights, pretrained=m.pretrained, image_size=cfg.data.image_size,
                           output_stride=cfg.cam.output_stride, cnn_features=m.cnn_features)
    net = SEAMNet(encoder, num_classes, head_dropout=cfg.seam.head_dropout,
                  class_prior=cfg.cam.class_prior != "none")
    attach_addons(cfg, net, BuildContext(num_classes=num_classes, feature_dim=encoder.out_channels,
                                         last_epoch=cfg.train.epochs - 1, seed=cfg.seed,
                                         capabilities=SEAM_CAPABILITIES))
    return net


def validate_seam_family(cfg: ExperimentConfig) -> None:
    """The CAM family's checks; the PCM-revised maps are SEAM's inference maps (no add-on CAM head)."""
    validate_cam_family(cfg)
    if cfg.cam.inference_cam == "aggregated":
        raise ConfigError("cam.inference_cam=aggregated: model.family=seam infers from the PCM-revised maps")


SEAM_FAMILY = Family("seam", "tagseg.seam/1", build_seam_net, seam_family_loss, validate_seam_family,
                     inference="tagseg.inference.cam:cam_merged_probabilities",  # from its PCM-revised maps
                     cam_maps=True, capabilities=SEAM_CAPABILITIES)
