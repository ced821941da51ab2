"""The two trainable refinement heads, on multi-level features of a frozen encoder.

- :class:`BoundaryBranch` (IRN ``net/resnet50_irn.py``, class-boundary part): per level a 1×1
  conv to 32 channels + GroupNorm(4) + ReLU, resized to the stride-4 grid, concatenated, and a
  1×1 conv (with bias) to one boundary logit.
- :class:`AffinityHead` (PSA ``network/resnet38_aff.py``): the last three levels through 1×1
  convs to 64 / 128 / 256 channels + ELU, concatenated (448), a 1×1 conv 448 -> 448 + ELU; a
  pair's affinity is exp(-mean_c |f_i - f_j|) (:func:`feature_affinity`).

Features come from :func:`encoder_pyramid`: the run's own :class:`~tagseg.models.encoder.PatchEncoder`
(any timm CNN: its feature stages from stride 4 down to the encoder's grid; a ViT: four evenly
spaced blocks of its stride-16 grid), run without gradients.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tagseg.errors import ConfigError


def pyramid_levels(encoder: nn.Module) -> list[int]:
    """Indices (for timm ``forward_intermediates``) of the levels the heads use."""
    last = encoder.feature_index
    if getattr(encoder, "is_vit", False):
        n = last + 1
        return sorted({max(0, round(n * k / 4) - 1) for k in (1, 2, 3, 4)})
    info = encoder.backbone.feature_info
    levels = [i for i in range(last + 1) if info[i]["reduction"] >= 4]
    if not levels:
        raise ConfigError(f"encoder {encoder.name} has no feature level at stride >= 4")
    return levels


def pyramid_channels(encoder: nn.Module, levels: Sequence[int]) -> list[int]:
    """Channels of each level."""
    if getattr(encoder, "is_vit", False):
        return [encoder.out_channels] * len(levels)
    info = encoder.backbone.feature_info
    return [info[i]["num_chs"] for i in levels]


@torch.no_grad()
def encoder_pyramid(encoder: nn.Module, images: torch.Tensor, levels: Sequence[int]) -> list[torch.Tensor]:
    """Features (B, C_l, H/s_l, W/s_l) of images (B, 3, H, W) in [0, 1] at ``levels``, no gradient."""
    x = (images - encoder.mean) / encoder.std
    kwargs = {"norm": True} if getattr(encoder, "is_vit", False) else {}
    return list(encoder.backbone.forward_intermediates(x, indices=list(levels), intermediates_only=True, **kwargs))


class BoundaryBranch(nn.Module):
    """Class-boundary logits (B, 1, h, w) on the grid ``size`` from a list of feature levels."""

    def __init__(self, in_channels: Sequence[int], mid: int = 32, groups: int = 4) -> None:
        super().__init__()
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, mid, 1, bias=False), nn.GroupNorm(groups, mid)) for c in in_channels)
        self.out = nn.Conv2d(mid * len(in_channels), 1, 1, bias=True)

    def forward(self, features: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        parts = []
        for layer, f in zip(self.levels, features):
            y = layer(f)
            if y.shape[-2:] != tuple(size):
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            parts.append(F.relu(y))
        return self.out(torch.cat(parts, 1))


class AffinityHead(nn.Module):
    """Affinity features (B, 448, h, w) on the grid of the first of three levels."""

    def __init__(self, in_channels: Sequence[int], widths: Sequence[int] = (64, 128, 256)) -> None:
        super().__init__()
        if len(in_channels) < 3:
            raise ConfigError(f"the affinity head needs three feature levels, got {len(in_channels)}")
        self.inputs = nn.ModuleList(nn.Conv2d(c, w, 1, bias=False) for c, w in zip(in_channels[-3:], widths))
        self.mix = nn.Conv2d(sum(widths), sum(widths), 1, bias=False)
        for conv in self.inputs:
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.mix.weight, gain=4)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        feats = list(features)[-3:]
        size = feats[0].shape[-2:]
        parts = []
        for conv, f in zip(self.inputs, feats):
            y = F.elu(conv(f))
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            parts.append(y)
        return F.elu(self.mix(torch.cat(parts, 1)))


def feature_affinity(features: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """exp(-mean_c |f[src] - f[dst]|) for features (B, C, h, w) and flat pair indices (any equal
    or broadcastable shapes); returns (B,) + the pairs' shape."""
    b, c = features.shape[:2]
    flat = features.reshape(b, c, -1)
    src, dst = torch.broadcast_tensors(torch.as_tensor(src, device=features.device),
                                       torch.as_tensor(dst, device=features.device))
    fa = flat[:, :, src.reshape(-1)]
    fb = flat[:, :, dst.reshape(-1)]
    return torch.exp(-(fa - fb).abs().mean(1)).reshape((b,) + tuple(src.shape))


def grid_feature_affinity(features: torch.Tensor, offsets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """:func:`feature_affinity` of every pair of :func:`~tagseg.refine.pairs.pairs_in_grid` with these
    ``offsets``, in its order: (B, N). Each offset compares the grid with its shifted copy, so no
    (B, C, N) gather is made (the walk's pairs on a full image: about 20x faster on one CPU thread)."""
    h, w = features.shape[-2:]
    out = []
    for dy, dx in offsets:
        x0, x1 = max(0, -dx), w - max(0, dx)
        if h - dy <= 0 or x1 <= x0:
            continue
        a = features[..., :h - dy, x0:x1]
        b = features[..., dy:, x0 + dx:x1 + dx]
        out.append(torch.exp(-(a - b).abs().mean(1)).flatten(1))
    if not out:
        return features.new_zeros((features.shape[0], 0))
    return torch.cat(out, 1)


def path_affinity(boundary: torch.Tensor, path_indices: Sequence[torch.Tensor]) -> torch.Tensor:
    """IRN's training affinities: boundary probabilities (B, 1, H, W) and the groups of a
    :class:`~tagseg.refine.pairs.PathIndex` (each (P_g, L_g, S)) -> (B, P, S), 1 - the largest
    boundary value on each pair's path."""
    b = boundary.shape[0]
    flat = boundary.reshape(b, -1)
    out = []
    for idx in path_indices:
        p, length, s = idx.shape
        vals = flat[:, idx.reshape(-1)].reshape(b, p, length, s)
        out.append(1 - vals.amax(2))
    return torch.cat(out, 1)
