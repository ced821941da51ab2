"""Equivariance loss L_ET of ViT-PCM (METHODS.md §1, "Equivariance").

Two views of each image. View A: the image at S×S with flips/transpose. View B: the same
image, optionally a crop (corner on the patch grid), resized to S/2, own flips/transpose.
Four view-B images are tiled into one S×S mosaic. The target is view A's patch
probabilities (eval mode, no gradient) with A's flips undone, B's crop/resize/flips applied at
patch level (bilinear), then label merge. L_ET = mean over patches of -Σ_k T_k log P_k, with P
the mosaic predictions cut back into tiles; gradient flows only through the mosaic pass.

Geometry is stored per sample as a float tensor ``ViewGeometry`` row:
[hflip, vflip, transpose, crop_flag, crop_y0, crop_x0, crop_size] (pixels of the S×S image).
Flips are applied in the order hflip, vflip, transpose.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tagseg.data.geometry import _crop_box, _flips, apply_flips, crop_and_resize, undo_flips
from tagseg.methods.label_merge import label_merge

def target_grid_transform(grid_a: torch.Tensor, geom_a: torch.Tensor, geom_b: torch.Tensor,
                          patch_size: int, out_cells: int, align_corners: bool = False) -> torch.Tensor:
    """Patch-level map from view A's grid to view B's grid for one sample.

    grid_a: (K, h, w) predictions on view A. Undo A's flips, crop B's box in patch units
    (corner and size divisible by ``patch_size``), bilinear resize to out_cells² (``align_corners``
    as the image-level view B), apply B's flips. Returns (K, out_cells, out_cells).
    """
    g = undo_flips(grid_a, *_flips(geom_a))
    box = _crop_box(geom_b)
    if box is not None:
        y0, x0, size = box
        box = (y0 // patch_size, x0 // patch_size, size // patch_size)
    g = crop_and_resize(g, box, out_cells, align_corners)
    return apply_flips(g, *_flips(geom_b))


def mosaic_indices(batch_size: int) -> torch.Tensor:
    """(M, 4) batch indices tiled into each mosaic, M = ceil(B/4); indices wrap around."""
    m = (batch_size + 3) // 4
    return torch.arange(4 * m).reshape(m, 4) % batch_size


def build_mosaic(view_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """view_b (B, C, s, s) -> (mosaics (M, C, 2s, 2s), indices (M, 4)); tiles in row-major order."""
    idx = mosaic_indices(view_b.shape[0]).to(view_b.device)
    tiles = view_b[idx]  # (M, 4, C, s, s)
    top = torch.cat([tiles[:, 0], tiles[:, 1]], dim=-1)
    bottom = torch.cat([tiles[:, 2], tiles[:, 3]], dim=-1)
    return torch.cat([top, bottom], dim=-2), idx


def split_mosaic(grid: torch.Tensor) -> torch.Tensor:
    """(M, K, 2c, 2c) mosaic predictions -> (M, 4, K, c, c) tiles in row-major order."""
    c = grid.shape[-1] // 2
    return torch.stack([grid[..., :c, :c], grid[..., :c, c:], grid[..., c:, :c], grid[..., c:, c:]], dim=1)


@torch.no_grad()
def equivariance_target(probs_a: torch.Tensor, geom_a: torch.Tensor, geom_b: torch.Tensor,
                        labels: torch.Tensor, patch_size: int, align_corners: bool = False) -> torch.Tensor:
    """Target T (B, K, h/2, w/2) from view-A probabilities (B, K, h, w) (no gradient)."""
    out_cells = probs_a.shape[-1] // 2
    t = torch.stack([
        target_grid_transform(probs_a[i].float(), geom_a[i], geom_b[i], patch_size, out_cells, align_corners)
        for i in range(probs_a.shape[0])
    ])
    return label_merge(t, labels)


def equivariance_loss(mosaic_logits: torch.Tensor, indices: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_ET = mean over patches of -Σ_k T_k log P_k.

    mosaic_logits: (M, K, 2c, 2c) patch logits of the mosaic pass; indices: (M, 4) batch index
    of each tile; target: (B, K, c, c) from :func:`equivariance_target`.
    """
    log_p = split_mosaic(F.log_softmax(mosaic_logits.float(), dim=1))  # (M, 4, K, c, c)
    t = target[indices]  # (M, 4, K, c, c)
    return -(t * log_p).sum(dim=2).mean()
