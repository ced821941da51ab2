"""The CAM network (METHODS.md §2), with slots for the modules add-ons attach.

encoder (B, D, h, w) at stride 16 (or 8, dilated) -> 1×1 conv without bias -> K−1 foreground
class activation maps O (B, K−1, h, w). GAP of O gives the image logits; with ``class_prior`` a
learnt per-class offset b (K−1,) is added to them (``image_logits``), never to O, so the maps
pseudo-masks are made from stay the bias-free head's.

Add-ons (``tagseg.addons``) put their modules in the network's container ``addons`` (an
``nn.ModuleDict`` keyed by add-on name, :mod:`tagseg.models.addon_slots`) so they are trained from
the first epoch and saved with it. The network runs every module's ``view_output`` on each view's
features in its forward pass (``CAMOutput.addon_maps``); a module flagged ``cam_head`` gives a
second set of CAMs (``cams_aggregated``), which pseudo-masks use with ``inference_cam='aggregated'``.
The modules' ``on_epoch_end`` hooks run at the end of every training epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from tagseg.config import INFERENCE_CAMS
from tagseg.errors import ConfigError
from tagseg.models.addon_slots import addon_container, cam_head_name, end_epoch, view_outputs
from tagseg.models.encoder import PatchEncoder


@dataclass
class CAMOutput:
    """Outputs of one view.

    cams: O (B, K−1, h, w) raw scores; features: F (B, D, h, w); addon_maps: each add-on
    module's per-view output by add-on name (e.g. projected pixel embeddings (B, P, h, w));
    cams_aggregated: the add-on CAM head's maps (B, K−1, h, w) or None (then ``cams`` is the
    intermediate map of that head's loss).
    """

    cams: Tensor
    features: Tensor
    addon_maps: dict = field(default_factory=dict)
    cams_aggregated: Optional[Tensor] = None
    cams_revised: Optional[Tensor] = None  # SEAM: PCM-revised maps (B, K, h, w), background first


class CAMNet(nn.Module):
    """Backbone + 1×1 CAM head; add-on modules live in ``addons``.

    num_classes: K including background (the head has K−1 outputs). inference_cam: 'base' (O) or
    'aggregated' (the maps of an add-on module flagged ``cam_head``): the maps pseudo-masks are made from.
    class_prior: also learn a per-class logit offset ``class_prior`` (K−1,), starting at 0, that
    shifts the image logits only (see :meth:`image_logits`).
    """

    def __init__(self, encoder: PatchEncoder, num_classes: int, inference_cam: str = "base",
                 class_prior: bool = False) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"the CAM network needs K >= 2 classes (background + 1), got {num_classes}")
        if inference_cam not in INFERENCE_CAMS[1:]:  # "auto" is resolved when the network is built
            raise ConfigError(f"inference_cam={inference_cam!r}: choose base or aggregated")
        self.encoder = encoder
        self.num_classes = num_classes
        self.classifier = nn.Conv2d(encoder.out_channels, num_classes - 1, kernel_size=1, bias=False)
        self.addons = addon_container()
        self.class_prior: Optional[nn.Parameter]
        self.register_parameter("class_prior", nn.Parameter(torch.zeros(num_classes - 1)) if class_prior else None)
        self.inference_cam = inference_cam

    def aux_cam_head(self) -> Optional[str]:
        """The name of the add-on module that gives a second set of CAMs, or None."""
        return cam_head_name(self.addons)

    def _outputs(self, cams: Tensor, features: Tensor, **more: Optional[Tensor]) -> CAMOutput:
        """One view's output: the add-on modules run on ``features`` after the CAM head."""
        maps = view_outputs(self.addons, features)
        head = self.aux_cam_head()
        return CAMOutput(cams=cams, features=features, addon_maps=maps,
                         cams_aggregated=maps.get(head) if head is not None else None, **more)

    def _one_view(self, images: Tensor) -> CAMOutput:
        features = self.encoder(images)
        return self._outputs(self.classifier(features), features)

    def forward(self, images: Tensor, *more_views: Tensor) -> CAMOutput | tuple[CAMOutput, ...]:
        """images (B, 3, H, W) in [0, 1] -> CAMOutput on the (H/s)×(W/s) grid (s = output stride).

        With further views (any square size that is a multiple of 16), one CAMOutput per view, in
        one call (so a DDP wrapper sees a single forward pass).
        """
        if not more_views:
            return self._one_view(images)
        return tuple(self._one_view(x) for x in (images, *more_views))

    def inference_maps(self, images: Tensor) -> Tensor:
        """The raw maps pseudo-masks are made from: O, or the add-on CAM head's maps when
        ``inference_cam='aggregated'``."""
        if self.inference_cam == "aggregated" and self.aux_cam_head() is None:
            raise ConfigError("inference_cam='aggregated' needs an add-on CAM head (a module in net.addons flagged cam_head)")
        out = self._one_view(images)
        return out.cams_aggregated if self.inference_cam == "aggregated" else out.cams

    def image_logits(self, cams: Tensor) -> Tensor:
        """cams (B, K−1, h, w) -> image logits (B, K−1): their GAP, plus ``class_prior`` when learnt."""
        logits = cams.float().mean(dim=(2, 3))
        return logits if self.class_prior is None else logits + self.class_prior.float()

    def set_class_prior(self, frequencies: Tensor) -> None:
        """Start the learnt prior at the log-odds of each class's frequency (K−1,) in (0, 1)."""
        if self.class_prior is None:
            raise ConfigError("this CAM network has no class prior (cam.class_prior=none)")
        if frequencies.shape != self.class_prior.shape or not bool(((frequencies > 0) & (frequencies < 1)).all()):
            raise ConfigError(f"class prior: need {tuple(self.class_prior.shape)} frequencies in (0, 1), "
                              f"got shape {tuple(frequencies.shape)}")
        with torch.no_grad():
            self.class_prior.copy_(torch.logit(frequencies.to(self.class_prior)))

    def head_parameters(self) -> list[nn.Parameter]:
        """Everything but the encoder (trained from the first epoch)."""
        return [p for n, p in self.named_parameters() if not n.startswith("encoder.")]

    def on_epoch_end(self, epoch: int) -> None:
        """Run the add-on modules' end-of-epoch hooks."""
        end_epoch(self.addons, epoch)
