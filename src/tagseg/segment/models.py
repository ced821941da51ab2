"""DeepLab segmentation networks on timm backbones.

* **Backbone.** CNNs are built ``features_only`` with timm's ``output_stride`` (16, or 8 by
  dilating the last stages); the deepest map is the high-level input of the head and the
  first stride-4 map is DeepLab-v3+'s low-level input. ViTs (and CNNs whose timm builder has
  no ``output_stride``) go through :class:`~tagseg.models.encoder.PatchEncoder`: a stride-16
  grid, no stride-4 features.
* **DeepLab-v2 head** (ASPP-L): four parallel 3×3 convolutions with dilations 6, 12, 18, 24,
  each straight to K classes, summed.
* **DeepLab-v3+ head**: ASPP (1×1, three dilated 3×3, image pooling; BN + ReLU, the pooling
  branch without BN so a single image per device still trains), 1×1 projection, then a
  decoder that upsamples to stride 4, concatenates the projected low-level features (48
  channels) and applies two 3×3 convolutions. Without low-level features (ViT) the decoder
  works on the ASPP output directly.

:class:`SegmentationNet` takes images (B, 3, H, W) in [0, 1] of any size: it pads them on the
bottom/right to a multiple of its stride with the normaliser's mean (zero after
normalisation), and returns logits (B, K, H, W) upsampled bilinearly and cropped back.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tagseg.errors import ConfigError
from tagseg.segment.config import HEADS, SegModelConfig

V2_RATES = (6, 12, 18, 24)
V3PLUS_RATES = (6, 12, 18)  # at output stride 16; doubled at 8


def default_rates(head: str, output_stride: int) -> tuple[int, ...]:
    """Dilation rates of the head's parallel branches when the config leaves them empty."""
    if head == "deeplabv2":
        return V2_RATES
    return tuple(r * (16 // output_stride) for r in V3PLUS_RATES)


def rates_for_crop(head: str, output_stride: int, crop_size: int, reference_crop: int = 513) -> tuple[int, ...]:
    """The head's default rates scaled to a training crop: round(r · crop / 513), at least 1
    (the rates were chosen for 513-px crops; at 160 px and stride 16: (2, 4, 6))."""
    return tuple(max(1, int(round(r * crop_size / reference_crop))) for r in default_rates(head, output_stride))


def unreached_rates(rates: Sequence[int], crop_size: int, output_stride: int) -> list[int]:
    """The dilation rates whose off-centre taps fall outside a ``crop_size``-px training crop's
    feature map (ceil(crop/stride) cells a side) at every position.

    Such a branch is a 1×1 convolution in training (its other 8 taps read zero padding and keep
    their initial weights), but reads image content with those untrained weights at inference on
    larger images: a train/test mismatch.
    """
    cells = -(-crop_size // output_stride)
    return [r for r in rates if r >= cells]


class SegmentationBackbone(nn.Module):
    """images (B, 3, H, W) in [0, 1] -> (high (B, C, H/os, W/os), low (B, C_low, H/4, W/4) or None).

    ``mean`` (1, 3, 1, 1) is the normaliser's mean in [0, 1] units (the padding colour); for the
    ``features_only`` CNNs ``mean`` and ``std`` are part of the state dict.
    """

    def __init__(self, name: str, weights: Optional[str] = None, pretrained: bool = False,
                 output_stride: int = 16, image_size: int = 512) -> None:
        super().__init__()
        from tagseg.models.factory import build_timm_model

        self.name = name
        self.output_stride = output_stride
        self.patch_encoder = None
        self.body = None
        try:
            body = build_timm_model(name, weights=weights, pretrained=pretrained, features_only=True,
                                    output_stride=output_stride)
        except TypeError:  # no output_stride argument: ViTs and some CNNs
            body = None
        if body is not None:
            reductions = list(body.feature_info.reduction())
            channels = list(body.feature_info.channels())
            if reductions[-1] != output_stride:
                raise ConfigError(f"encoder {name}: deepest feature map has stride {reductions[-1]}, "
                                  f"model.output_stride={output_stride} asked for (strides: {reductions})")
            self.body = body
            self.high_index = len(reductions) - 1
            low = [i for i, r in enumerate(reductions) if r == 4]
            self.low_index = low[0] if low else None
            self.out_channels = channels[-1]
            self.low_channels = channels[self.low_index] if low else None
            mean, std = self._normalization(weights)
            # saved with the weights, so a reloaded model normalises exactly as in training
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        else:
            if output_stride != 16:
                raise ConfigError(f"encoder {name} has no dilated (output_stride) variant in timm; "
                                  "use model.output_stride=16")
            from tagseg.models.encoder import PatchEncoder

            self.patch_encoder = PatchEncoder(name, weights=weights, pretrained=pretrained, image_size=image_size)
            self.out_channels = self.patch_encoder.out_channels
            self.low_channels = None
            self.register_buffer("mean", self.patch_encoder.mean.clone(), persistent=False)

    @property
    def is_vit(self) -> bool:
        return self.patch_encoder is not None and self.patch_encoder.is_vit

    def _normalization(self, weights: Optional[str]) -> tuple[Sequence[float], Sequence[float]]:
        if weights == "lite":
            from tagseg.models.lite import lite_normalization

            return lite_normalization(self.name)
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        return cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.patch_encoder is not None:
            return self.patch_encoder(images), None
        feats = self.body((images - self.mean) / self.std)
        low = feats[self.low_index] if self.low_index is not None else None
        return feats[self.high_index], low


def conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DeepLabV2Head(nn.Module):
    """(B, C, h, w) -> (B, K, h, w): sum of parallel dilated 3×3 convolutions (ASPP-L)."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = V2_RATES) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True) for r in rates)
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, high: torch.Tensor, low: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self.branches[0](high)
        for branch in self.branches[1:]:
            out = out + branch(high)
        return out


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (v3): (B, C, h, w) -> (B, channels, h, w)."""

    def __init__(self, in_channels: int, channels: int = 256, rates: Sequence[int] = V3PLUS_RATES,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(in_channels, channels, 1)] +
                                      [conv_bn_relu(in_channels, channels, 3, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, channels, 1), nn.ReLU(inplace=True))
        self.project = nn.Sequential(conv_bn_relu(channels * (len(rates) + 2), channels, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3PlusHead(nn.Module):
    """ASPP on the high-level map + decoder with the stride-4 map -> (B, K, H/4, W/4)
    (or (B, K, h, w) of the high-level map when there are no low-level features)."""

    def __init__(self, in_channels: int, low_channels: Optional[int], num_classes: int,
                 rates: Sequence[int] = V3PLUS_RATES, channels: int = 256, low_proj: int = 48,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, channels, rates, dropout)
        self.low = conv_bn_relu(low_channels, low_proj, 1) if low_channels else None
        fuse_in = channels + (low_proj if low_channels else 0)
        self.fuse = nn.Sequential(conv_bn_relu(fuse_in, channels, 3), conv_bn_relu(channels, channels, 3))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, high: torch.Tensor, low: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = self.aspp(high)
        if self.low is not None:
            if low is None:
                raise ValueError("this DeepLab-v3+ head needs low-level (stride-4) features")
            y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
            y = torch.cat([y, self.low(low)], dim=1)
        return self.classifier(self.fuse(y))


class SegmentationNet(nn.Module):
    """Backbone + DeepLab head: images (B, 3, H, W) in [0, 1] -> logits (B, K, H, W)."""

    def __init__(self, backbone: SegmentationBackbone, head: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_classes = num_classes
        self.size_divisor = backbone.output_stride if backbone.patch_encoder is None else 16

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        d = self.size_divisor
        hp, wp = -(-h // d) * d, -(-w // d) * d
        x = images
        if (hp, wp) != (h, w):
            x = self.backbone.mean.to(images.dtype).expand(b, 3, hp, wp).clone()
            x[:, :, :h, :w] = images
        high, low = self.backbone(x)
        logits = self.head(high, low)
        logits = F.interpolate(logits, size=(hp, wp), mode="bilinear", align_corners=False)
        return logits[:, :, :h, :w]

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.head.parameters() if p.requires_grad]


def build_segmenter(cfg: SegModelConfig, num_classes: int, image_size: int = 512) -> SegmentationNet:
    """The network of ``cfg`` for ``num_classes`` classes (image_size: the ViT's nominal input)."""
    if cfg.head not in HEADS:
        raise ConfigError(f"model.head={cfg.head!r}: choose deeplabv2 or deeplabv3plus")
    backbone = SegmentationBackbone(cfg.encoder, cfg.weights, cfg.pretrained, cfg.output_stride, image_size)
    rates = tuple(cfg.aspp_rates) or default_rates(cfg.head, cfg.output_stride)
    if cfg.head == "deeplabv2":
        head: nn.Module = DeepLabV2Head(backbone.out_channels, num_classes, rates)
    else:
        head = DeepLabV3PlusHead(backbone.out_channels, backbone.low_channels, num_classes, rates,
                                 cfg.aspp_channels, cfg.low_level_channels, cfg.dropout)
    return SegmentationNet(backbone, head, num_classes)
