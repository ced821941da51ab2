"""The multi-scale + horizontal-flip loop shared by pseudo-masks, CAMs and segmentation.

For every scale the image is resized by a *resize policy*:

- ``"square"`` (patch classifier, CAM network): a square of side ``base_size·scale`` px
  snapped to a multiple of ``snap`` (the patch size), at least ``snap``; always resampled
  (bilinear, antialiased);
- ``"aspect"`` (segmentation): (round(s·H), round(s·W)), resampled only when the size
  changes (bilinear, antialiased when shrinking).

With ``flip`` the mirrored copy goes through the network in the same batch as the original and
its output is mirrored back. Every output is resized (bilinear) to ``out_size`` and the outputs
are averaged (or, with ``average=False``, summed) over scales and flips.

``align_corners=True`` (the official ViT-PCM resize, ``tf.compat.v1.image.resize(align_corners=True)``)
makes the 'square' input resize and the output resize bilinear with aligned corners and no antialiasing.
"""

from __future__ import annotations

from typing import Callable, Literal, Optional, Sequence

import torch
import torch.nn.functional as F

from tagseg.models.encoder import PATCH_STRIDE

Forward = Callable[[torch.Tensor], torch.Tensor]
"""batch (B, 3, h, w) float in [0, 1] -> maps (B, C, h', w')."""

ResizePolicy = Literal["square", "aspect"]


def snapped_side(base: int, scale: float, snap: int = PATCH_STRIDE) -> int:
    """Side of the square input at ``scale``: round(base·scale / snap)·snap, at least ``snap``."""
    return max(snap, int(round(base * scale / snap)) * snap)


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(round(s·H), round(s·W)), each at least 1."""
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def scaled_input(image: torch.Tensor, scale: float, policy: ResizePolicy, base_size: Optional[int] = None,
                 snap: int = PATCH_STRIDE, align_corners: bool = False) -> torch.Tensor:
    """image (3, H, W) float -> (1, 3, h, w): the network input at ``scale`` under ``policy``."""
    x = image[None].float()
    if policy == "square":
        if base_size is None:
            raise ValueError("resize policy 'square' needs base_size")
        side = snapped_side(base_size, scale, snap)
        if align_corners:
            return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=True)
        return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    if policy == "aspect":
        size = scaled_size(*image.shape[-2:], scale)
        if size == tuple(image.shape[-2:]):
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
    raise ValueError(f"unknown resize policy {policy!r}: choose 'square' or 'aspect'")


@torch.no_grad()
def multiscale_maps(forward: Forward, image: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False,
                    resize_policy: ResizePolicy = "aspect", out_size: Optional[tuple[int, int]] = None,
                    base_size: Optional[int] = None, snap: int = PATCH_STRIDE, average: bool = True,
                    align_corners: bool = False) -> torch.Tensor:
    """Mean (``average=False``: sum) of ``forward``'s maps over scales and flips: image (3, H, W)
    float in [0, 1] on the model's device -> (C, *out_size) (default out_size: H × W).
    ``base_size``: the scale-1 side of the 'square' policy; ``align_corners``: see the module docstring."""
    out_size = tuple(out_size) if out_size is not None else tuple(image.shape[-2:])
    acc = None
    n = 0
    for s in scales:
        x = scaled_input(image, s, resize_policy, base_size, snap, align_corners)
        batch = torch.cat([x, x.flip(-1)]) if flip else x
        maps = forward(batch)
        if flip:
            maps = torch.stack([maps[0], maps[1].flip(-1)])
        if tuple(maps.shape[-2:]) != out_size:
            maps = F.interpolate(maps, size=out_size, mode="bilinear", align_corners=align_corners)
        part = maps.sum(0)
        acc = part if acc is None else acc + part
        n += batch.shape[0]
    return acc / n if average else acc


@torch.no_grad()
def multiscale_maps_batch(forward: Forward, images: Sequence[torch.Tensor], scales: Sequence[float] = (1.0,),
                          flip: bool = False, resize_policy: ResizePolicy = "aspect",
                          out_sizes: Optional[Sequence[tuple[int, int]]] = None, base_size: Optional[int] = None,
                          snap: int = PATCH_STRIDE, average: bool = True, align_corners: bool = False) -> list[torch.Tensor]:
    """:func:`multiscale_maps` of several images, batched: per scale, every image whose input has
    the same size (all of them under 'square') goes through ``forward`` in one batch together with
    its mirror. images: (3, H_i, W_i) float in [0, 1] on the model's device; out_sizes: one
    (h, w) per image (default: its own H_i × W_i). Returns one (C, *out_size_i) map per image,
    equal to ``multiscale_maps`` of that image up to the network's batch-size rounding."""
    if out_sizes is None:
        out_sizes = [tuple(im.shape[-2:]) for im in images]
    out_sizes = [tuple(s) for s in out_sizes]
    if len(out_sizes) != len(images):
        raise ValueError(f"{len(out_sizes)} output sizes for {len(images)} images")
    acc: list[Optional[torch.Tensor]] = [None] * len(images)
    per_image = 2 if flip else 1
    for s in scales:
        inputs = [scaled_input(im, s, resize_policy, base_size, snap, align_corners) for im in images]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(inputs):
            groups.setdefault(tuple(x.shape[-2:]), []).append(i)
        for members in groups.values():
            xs = torch.cat([inputs[i] for i in members])
            batch = torch.cat([xs, xs.flip(-1)]) if flip else xs
            maps = forward(batch)
            n = len(members)
            for j, i in enumerate(members):
                m = torch.stack([maps[j], maps[n + j].flip(-1)]) if flip else maps[j:j + 1]
                if tuple(m.shape[-2:]) != out_sizes[i]:
                    m = F.interpolate(m, size=out_sizes[i], mode="bilinear", align_corners=align_corners)
                part = m.sum(0)
                acc[i] = part if acc[i] is None else acc[i] + part
    n_views = per_image * len(scales)
    return [a / n_views if average else a for a in acc]  # type: ignore[operator]
