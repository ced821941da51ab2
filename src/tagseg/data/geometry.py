"""View geometry of the training views (METHODS.md §1, "Equivariance"): flips, transpose, crops.

Geometry is stored per sample as a float tensor row
[hflip, vflip, transpose, crop_flag, crop_y0, crop_x0, crop_size] (pixels of the S×S image).
Flips are applied in the order hflip, vflip, transpose. The same functions move images (here, when
the views are made) and patch-probability grids (``tagseg.methods.equivariance``, for L_ET's target).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

def apply_flips(x: torch.Tensor, hflip: bool, vflip: bool, transpose: bool) -> torch.Tensor:
    """Flip the last two axes (..., H, W): horizontal, then vertical, then transpose."""
    if hflip:
        x = x.flip(-1)
    if vflip:
        x = x.flip(-2)
    if transpose:
        x = x.transpose(-1, -2)
    return x


def undo_flips(x: torch.Tensor, hflip: bool, vflip: bool, transpose: bool) -> torch.Tensor:
    """Inverse of :func:`apply_flips` (each operation is an involution; reverse the order)."""
    if transpose:
        x = x.transpose(-1, -2)
    if vflip:
        x = x.flip(-2)
    if hflip:
        x = x.flip(-1)
    return x


def _flips(geom: torch.Tensor) -> tuple[bool, bool, bool]:
    return bool(geom[0] > 0.5), bool(geom[1] > 0.5), bool(geom[2] > 0.5)


def _crop_box(geom: torch.Tensor) -> tuple[int, int, int] | None:
    if geom[3] <= 0.5:
        return None
    return int(geom[4]), int(geom[5]), int(geom[6])


def crop_and_resize(x: torch.Tensor, box: tuple[int, int, int] | None, out_size: int,
                    align_corners: bool = False) -> torch.Tensor:
    """x (C, H, W) -> optional square crop (y0, x0, size) -> bilinear resize to out_size².

    Bilinear without antialiasing. align_corners=False: an exact factor-2 reduction averages
    2×2 blocks, so image-level and patch-level resizing agree on the patch grid. align_corners=True
    (the official ViT-PCM resize) maps the corner samples onto each other.
    """
    if box is not None:
        y0, x0, size = box
        x = x[..., y0:y0 + size, x0:x0 + size]
    if x.shape[-1] == out_size and x.shape[-2] == out_size:
        return x
    return F.interpolate(x[None].float(), size=(out_size, out_size), mode="bilinear",
                         align_corners=align_corners)[0].to(x.dtype)


def view_b_image(image_a0: torch.Tensor, geom_b: torch.Tensor, out_size: int,
                 align_corners: bool = False) -> torch.Tensor:
    """Image-level view B from the un-flipped S×S image (C, S, S) -> (C, out_size, out_size)."""
    x = crop_and_resize(image_a0, _crop_box(geom_b), out_size, align_corners)
    return apply_flips(x, *_flips(geom_b))
