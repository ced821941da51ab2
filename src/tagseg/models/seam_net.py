"""SEAM's network: the CAM network plus the pixel correlation module (PCM), on any timm CNN.

Source: YudeWang/SEAM @ 3212261 ``network/resnet38_SEAM.py`` (``Net.forward`` lines 29-50,
``Net.PCM`` lines 52-63).

- CAM head: Dropout2d(0.5) -> 1×1 conv without bias (xavier-uniform) on the deepest map;
- PCM input (no gradient): ReLU(cam) divided per map by its maximum (+1e-5) after subtracting
  1e-5, the background channel 1 − max over foreground, and every foreground value below the
  pixel's foreground maximum set to 0 (:func:`pcm_seed`);
- PCM features (no gradient into the encoder): the normalised image resized (bilinear,
  align_corners) to the CAM grid, ReLU(1×1 conv → 64) of a mid-level map and ReLU(1×1 conv → 128)
  of a deeper one (kaiming-normal), concatenated -> 1×1 conv → 192 (xavier-uniform, gain 4);
- PCM: cosine affinity of those 192-d pixel features, ReLU, each column divided by its sum
  (+1e-5), the seed maps propagated through it (:func:`pixel_correlation`).

Which maps feed PCM: the official ResNet-38 takes ``conv4`` (512 channels, the last stride-8
stage) and ``conv5`` (1024 channels, the stage before the deepest ones). On a timm CNN tagseg
takes the two feature maps timm lists just before the encoder's output map
(:func:`pcm_feature_indices`): ResNet-50 ``layer2`` (512) and ``layer3`` (1024), the same
positions and widths; EfficientNet(-Lite) ``blocks.2`` (stride 8) and ``blocks.4`` (stride 16).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tagseg.errors import ConfigError
from tagseg.models.cam_net import CAMNet, CAMOutput
from tagseg.models.encoder import PatchEncoder

PCM_EPS = 1e-5


def pcm_seed(cams: Tensor) -> Tensor:
    """cams (B, K−1, h, w) raw foreground scores -> PCM's seed maps (B, K, h, w), no gradient:
    n = ReLU(cam − 1e-5) / (max ReLU(cam) + 1e-5) per map, background 1 − max_c n_c, and each
    foreground value below the pixel's foreground maximum set to 0."""
    with torch.no_grad():
        c = F.relu(cams.detach())
        peak = c.flatten(2).max(dim=-1)[0][..., None, None] + PCM_EPS
        fg = F.relu(c - PCM_EPS) / peak
        top = fg.max(dim=1, keepdim=True)[0]
        fg = torch.where(fg < top, torch.zeros_like(fg), fg)
        return torch.cat([1 - top, fg], dim=1)


def pixel_correlation(seed: Tensor, features: Tensor) -> Tensor:
    """PCM: seed (B, K, h', w') maps, features (B, D, h, w) the projected pixel features ->
    revised maps (B, K, h, w). The seed is resized (bilinear, align_corners) to h×w; features are
    L2-normalised per pixel (+1e-5); A = ReLU(fᵀf), each column divided by its sum (+1e-5);
    revised = seed · A."""
    n, _, h, w = features.shape
    seed = F.interpolate(seed, (h, w), mode="bilinear", align_corners=True).reshape(n, seed.shape[1], h * w)
    f = features.reshape(n, -1, h * w)
    f = f / (f.norm(dim=1, keepdim=True) + PCM_EPS)
    aff = F.relu(f.transpose(1, 2) @ f)
    aff = aff / (aff.sum(dim=1, keepdim=True) + PCM_EPS)
    return (seed @ aff).reshape(n, -1, h, w)


def pcm_feature_indices(encoder: PatchEncoder) -> tuple[int, int]:
    """The timm feature-map indices whose maps feed PCM: the two listed just before the output map."""
    info = getattr(encoder.backbone, "feature_info", None)
    index = getattr(encoder, "feature_index", None)
    if encoder.is_vit or info is None or index is None or index < 2:
        raise ConfigError(f"model.family=seam needs a timm CNN encoder with feature stages "
                          f"(PCM reads two mid-level maps); {encoder.name} has none")
    return index - 2, index - 1


class PCMHead(nn.Module):
    """The PCM feature projection: [image, ReLU(conv 64 (mid)), ReLU(conv 128 (deep))] -> conv 192."""

    def __init__(self, mid_channels: int, deep_channels: int) -> None:
        super().__init__()
        self.mid = nn.Conv2d(mid_channels, 64, 1, bias=False)
        self.deep = nn.Conv2d(deep_channels, 128, 1, bias=False)
        self.proj = nn.Conv2d(64 + 128 + 3, 192, 1, bias=False)
        nn.init.kaiming_normal_(self.mid.weight)
        nn.init.kaiming_normal_(self.deep.weight)
        nn.init.xavier_uniform_(self.proj.weight, gain=4)

    def forward(self, image: Tensor, mid: Tensor, deep: Tensor, size: tuple[int, int]) -> Tensor:
        """image (B, 3, H, W) normalised, mid/deep encoder maps (detached here) -> (B, 192, *size)."""
        resize = lambda t: t if tuple(t.shape[-2:]) == size else F.interpolate(  # noqa: E731
            t, size, mode="bilinear", align_corners=True)
        x_s = F.interpolate(image, size, mode="bilinear", align_corners=True)
        f_mid = resize(F.relu(self.mid(mid.detach())))
        f_deep = resize(F.relu(self.deep(deep.detach())))
        return self.proj(torch.cat([x_s, f_mid, f_deep], dim=1))


class SEAMNet(CAMNet):
    """CAMNet with SEAM's Dropout2d(0.5) before the head and the PCM; ``cams_revised`` in each
    output (B, K, h, w, background first) and the revised foreground maps for inference.
    ``class_prior``: CAMNet's learnt logit offset (tagseg's, off in the official SEAM)."""

    def __init__(self, encoder: PatchEncoder, num_classes: int, head_dropout: float = 0.5,
                 class_prior: bool = False) -> None:
        super().__init__(encoder, num_classes, class_prior=class_prior)
        nn.init.xavier_uniform_(self.classifier.weight)
        self.head_dropout = nn.Dropout2d(head_dropout)
        self.pcm_indices = pcm_feature_indices(encoder)
        info = encoder.backbone.feature_info
        self.pcm = PCMHead(info[self.pcm_indices[0]]["num_chs"], info[self.pcm_indices[1]]["num_chs"])
        self._taps: dict[int, Tensor] = {}
        self._tapping = False  # only this network's own forward records (not a copy of its encoder)
        for i in self.pcm_indices:
            module = encoder.backbone.get_submodule(info[i]["module"])
            module.register_forward_hook(self._tap(i))

    def _tap(self, index: int):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if self._tapping:
                self._taps[index] = output
        return hook

    def _one_view(self, images: Tensor) -> CAMOutput:
        self._taps.clear()
        self._tapping = True
        try:
            features = self.encoder(images)
        finally:
            self._tapping = False
        mid, deep = (self._taps.get(i) for i in self.pcm_indices)
        if mid is None or deep is None:
            raise ConfigError(f"encoder {self.encoder.name}: the PCM feature maps were not produced")
        self._taps.clear()
        dropped = self.head_dropout(features)
        cams = self.classifier(dropped)
        size = tuple(cams.shape[-2:])
        normalised = (images - self.encoder.mean) / self.encoder.std
        revised = pixel_correlation(pcm_seed(cams), self.pcm(normalised, mid, deep, size))
        return self._outputs(cams, features, cams_revised=revised)

    def inference_maps(self, images: Tensor) -> Tensor:
        """The PCM-revised foreground maps (B, K−1, h, w) (``infer_SEAM.py`` uses ``cam_rv[:, 1:]``)."""
        return self._one_view(images).cams_revised[:, 1:]

