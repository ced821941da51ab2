"""The CAM network (METHODS.md §2) with optional PPC and RCA modules.

encoder (B, D, h, w) at stride 16 (or 8, dilated) -> 1×1 conv without bias -> K−1 foreground
class activation maps O (B, K−1, h, w). GAP of O gives the image logits.

Add-on modules live in the network so they are trained from the first epoch and saved with it:

- ``projector`` (PPC): 1×1 conv -> ReLU -> per-pixel L2 normalisation of the encoder features.
- ``aggregation`` (RCA): prototypes Q (buffers, kept for inference) and a second 1×1 CAM head P
  on [F, softmax(F Qᵀ) Q]; ``memory``: the region memory bank (buffers). The bank is refreshed
  into prototypes by k-means at the end of every epoch (:meth:`CAMNet.on_epoch_end`) and released
  after the last one, so the final model file holds the prototypes but not the bank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from tagseg.addons.ppc import PPCProjector
from tagseg.addons.rca import RCAAggregation, RCAConfig, RegionMemoryBank
from tagseg.config import ExperimentConfig
from tagseg.errors import ConfigError
from tagseg.models.encoder import PatchEncoder


@dataclass
class CAMOutput:
    """Outputs of one view.

    cams: O (B, K−1, h, w) raw scores; features: F (B, D, h, w); embeddings: PPC's v
    (B, P, h, w) unit vectors or None; cams_aggregated: RCA's P (B, K−1, h, w) or None.
    """

    cams: Tensor
    features: Tensor
    embeddings: Optional[Tensor] = None
    cams_aggregated: Optional[Tensor] = None


class CAMNet(nn.Module):
    """Backbone + 1×1 CAM head, optionally with PPC's projector and RCA's aggregation head + memory.

    num_classes: K including background (the head has K−1 outputs). projector_dim: > 0 adds PPC's
    projector. rca: adds RCA's memory bank and aggregation head. inference_cam: 'base' (O) or
    'aggregated' (P, needs ``rca``): the maps pseudo-masks are made from. last_epoch: 0-based index
    of the final training epoch, after which the memory bank is released (None: never).
    kmeans_seed: seeds the per-epoch k-means (together with the epoch).
    """

    def __init__(self, encoder: PatchEncoder, num_classes: int, projector_dim: int = 0,
                 rca: Optional[RCAConfig] = None, inference_cam: str = "base",
                 last_epoch: Optional[int] = None, kmeans_seed: int = 0) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"the CAM network needs K >= 2 classes (background + 1), got {num_classes}")
        if inference_cam not in ("base", "aggregated"):
            raise ConfigError(f"inference_cam={inference_cam!r}: choose base or aggregated")
        if inference_cam == "aggregated" and rca is None:
            raise ConfigError("inference_cam='aggregated' needs the RCA aggregation head")
        self.encoder = encoder
        self.num_classes = num_classes
        dim = encoder.out_channels
        self.classifier = nn.Conv2d(dim, num_classes - 1, kernel_size=1, bias=False)
        self.projector = PPCProjector(dim, projector_dim) if projector_dim > 0 else None
        self.rca_config = rca
        if rca is not None:
            self.aggregation: Optional[RCAAggregation] = RCAAggregation(dim, num_classes - 1, rca.prototypes_per_class)
            self.memory: Optional[RegionMemoryBank] = RegionMemoryBank(
                num_classes - 1, dim, rca.capacity, rca.momentum, rca.score_threshold)
        else:
            self.aggregation, self.memory = None, None
        self.inference_cam = inference_cam
        self.last_epoch = last_epoch
        self.kmeans_seed = kmeans_seed

    def _one_view(self, images: Tensor) -> CAMOutput:
        features = self.encoder(images)
        return CAMOutput(
            cams=self.classifier(features),
            features=features,
            embeddings=self.projector(features) if self.projector is not None else None,
            cams_aggregated=self.aggregation(features) if self.aggregation is not None else None,
        )

    def forward(self, images: Tensor, *more_views: Tensor) -> CAMOutput | tuple[CAMOutput, ...]:
        """images (B, 3, H, W) in [0, 1] -> CAMOutput on the (H/s)×(W/s) grid (s = output stride).

        With further views (any square size that is a multiple of 16), one CAMOutput per view, in
        one call (so a DDP wrapper sees a single forward pass).
        """
        if not more_views:
            return self._one_view(images)
        return tuple(self._one_view(x) for x in (images, *more_views))

    def inference_maps(self, images: Tensor) -> Tensor:
        """The raw maps pseudo-masks are made from: O, or RCA's P when ``inference_cam='aggregated'``."""
        out = self._one_view(images)
        return out.cams_aggregated if self.inference_cam == "aggregated" else out.cams

    def head_parameters(self) -> list[nn.Parameter]:
        """Everything but the encoder (trained from the first epoch)."""
        return [p for n, p in self.named_parameters() if not n.startswith("encoder.")]

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> None:
        """RCA: k-means prototypes from the memory bank; after the last epoch the bank is released."""
        if self.aggregation is None or self.memory is None:
            return
        cfg = self.rca_config
        self.aggregation.update_prototypes(self.memory, iters=cfg.kmeans_iters,
                                           seed=self.kmeans_seed * 100_003 + 1000 * epoch)
        if self.last_epoch is not None and epoch >= self.last_epoch:
            self.memory.release()


def build_cam_net(cfg: ExperimentConfig, num_classes: int) -> CAMNet:
    """The CAM network of ``cfg`` (model.encoder/weights, cam.output_stride, enabled add-ons)."""
    from tagseg.addons.settings import rca_settings

    m, a = cfg.model, cfg.addons
    encoder = PatchEncoder(m.encoder, weights=m.weights, pretrained=m.pretrained, image_size=cfg.data.image_size,
                           output_stride=cfg.cam.output_stride)
    rca = rca_settings(a.rca) if a.rca.enabled else None
    inference_cam = cfg.cam.inference_cam
    if inference_cam == "auto":
        inference_cam = "aggregated" if rca is not None else "base"
    return CAMNet(encoder, num_classes, projector_dim=a.ppc.proj_dim if a.ppc.enabled else 0, rca=rca,
                  inference_cam=inference_cam, last_epoch=cfg.train.epochs - 1, kmeans_seed=cfg.seed)
