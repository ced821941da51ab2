"""Pixel-adaptive refinement (PAR), training-free (ToCo / AFA ``model/PAR.py``, used in
``utils/camutils.refine_cams_with_bkg_v2``).

Each pixel looks at its 8 neighbours at every dilation d (replicate padding). Their weights are

    softmax_n( mean_c -(|I_n - I| / (std_n I_n + 1e-8) / w1)² ) + w2 · softmax_n( -(p_n / std_n p / w1)² )

with I the image, std over the neighbours (unbiased), p_n the neighbour's distance (d or d·√2);
the scores are replaced ``num_iter`` times by the weighted sum of their neighbours' scores.
Defaults: dilations (1, 2, 4, 8, 12, 24), 10 iterations, w1 = 0.3, w2 = 0.01.

On seeds (:func:`par_seed_labels`) it runs twice, with a constant background score of 0.7 and
of 0.25 in front of the class scores (softmax over background + present classes, at half the
image size); the high-background map decides foreground, both must agree on background, the
rest is 255 (ToCo VOC defaults ``high_thre`` / ``low_thre``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tagseg.errors import ConfigError
from tagseg.refine.labels import combine_confident

# the 8 neighbours of a pixel, row-major, at unit dilation
NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def neighbour_index(height: int, width: int, dilations: Sequence[int], device=None) -> torch.Tensor:
    """int64 (8·len(dilations), H·W): flat index of each pixel's neighbour at every dilation,
    clamped to the border (replicate padding)."""
    ys = torch.arange(height, device=device).view(-1, 1)
    xs = torch.arange(width, device=device).view(1, -1)
    rows = []
    for d in dilations:
        for dy, dx in NEIGHBOURS:
            y = (ys + dy * d).clamp(0, height - 1)
            x = (xs + dx * d).clamp(0, width - 1)
            rows.append((y * width + x).reshape(-1))
    return torch.stack(rows)


def dilated_neighbours(x: torch.Tensor, dilations: Sequence[int], index: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 8·len(dilations), H, W): the values of each pixel's neighbours
    at every dilation, borders replicated. ``index``: :func:`neighbour_index` of that grid."""
    b, c, h, w = x.shape
    if index is None:
        index = neighbour_index(h, w, dilations, x.device)
    flat = x.reshape(b * c, h * w).index_select(1, index.reshape(-1))
    return flat.reshape(b, c, index.shape[0], h, w)


def par_weights(image: torch.Tensor, dilations: Sequence[int], w1: float = 0.3, w2: float = 0.01,
                index: torch.Tensor | None = None) -> torch.Tensor:
    """Neighbour weights (B, 1, N, H, W), N = 8·len(dilations), of an image (B, 3, H, W)."""
    neigh = dilated_neighbours(image, dilations, index)
    diff = (neigh - image.unsqueeze(2)).abs()
    std = neigh.std(dim=2, keepdim=True)
    colour = (-(diff / (std + 1e-8) / w1) ** 2).mean(dim=1, keepdim=True)
    dist = torch.tensor([d * (math.sqrt(2) if dy and dx else 1.0) for d in dilations for dy, dx in NEIGHBOURS],
                        dtype=image.dtype, device=image.device)
    position = -(dist / dist.std() / w1) ** 2
    return F.softmax(colour, dim=2) + w2 * F.softmax(position, dim=0).view(1, 1, -1, 1, 1)


def par_kernel(image: torch.Tensor, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24), w1: float = 0.3,
               w2: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(neighbour index, weights) of an image (B, 3, H, W), shared by every PAR run on it."""
    image = image.float()
    index = neighbour_index(image.shape[-2], image.shape[-1], dilations, image.device)
    return index, par_weights(image, dilations, w1, w2, index)


def par(image: torch.Tensor, scores: torch.Tensor, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
        num_iter: int = 10, w1: float = 0.3, w2: float = 0.01,
        kernel: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Refine scores (B, K, h, w) on an image (B, 3, H, W): scores are resized to (H, W)
    (bilinear, corners aligned), then propagated; returns (B, K, H, W). ``kernel``: the
    (neighbour index, weights) of :func:`par_kernel` for this image, to reuse them."""
    if image.dim() != 4 or scores.dim() != 4 or image.shape[0] != scores.shape[0]:
        raise ConfigError(f"PAR needs image (B, 3, H, W) and scores (B, K, h, w), got "
                          f"{tuple(image.shape)} and {tuple(scores.shape)}")
    if not dilations or any(int(d) < 1 for d in dilations):
        raise ConfigError(f"PAR dilations must be integers >= 1, got {list(dilations)}")
    image = image.float()
    scores = F.interpolate(scores.float(), size=image.shape[-2:], mode="bilinear", align_corners=True)
    index, weights = kernel if kernel is not None else par_kernel(image, dilations, w1, w2)
    for _ in range(num_iter):
        scores = (dilated_neighbours(scores, dilations, index) * weights).sum(2)
    return scores


def par_seed_labels(image: np.ndarray, scores: np.ndarray, keys: np.ndarray, high_thres: float = 0.7,
                    low_thres: float = 0.25, down_scale: int = 2, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
                    num_iter: int = 10, w1: float = 0.3, w2: float = 0.01,
                    kernel: tuple[torch.Tensor, torch.Tensor] | None = None) -> np.ndarray:
    """PAR on seeds: uint8 (H, W) labels, 0 background, 255 unsure.

    image: uint8 (H, W, 3); scores: (C, H, W) foreground scores in [0, 1] of the present classes
    (any grid, resized bilinearly to the image); keys: (C,) their class ids; kernel: the
    :func:`par_kernel` of the image at 1/down_scale, when already computed."""
    scores_t = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if scores_t.dim() != 3 or scores_t.shape[0] != len(keys):
        raise ConfigError(f"seed scores must be (C, H, W) with one key per class, got "
                          f"{tuple(scores_t.shape)} and {len(keys)} keys")
    h, w = image.shape[:2]
    small = (max(1, h // down_scale), max(1, w // down_scale))
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    img_small = F.interpolate(img, size=small, mode="bilinear", align_corners=False)
    cams = F.interpolate(scores_t[None], size=(h, w), mode="bilinear", align_corners=False)
    all_keys = np.concatenate([[0], keys])
    kernel = kernel if kernel is not None else par_kernel(img_small, dilations, w1, w2)
    maps = []
    for thres in (high_thres, low_thres):
        with_bg = torch.cat([torch.full_like(cams[:, :1], thres), cams], 1)
        probs = F.interpolate(with_bg, size=small, mode="bilinear", align_corners=False).softmax(1)
        refined = par(img_small, probs, dilations, num_iter, w1, w2, kernel)
        refined = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)
        maps.append(all_keys[refined[0].argmax(0).numpy()])
    return combine_confident(*maps)
