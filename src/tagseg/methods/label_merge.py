"""Label merge (METHODS.md §1): keep present classes, max-normalise each map, renormalise."""

from __future__ import annotations

import torch

MERGE_EPS = 1e-12


def label_merge(z: torch.Tensor, labels: torch.Tensor, class_dim: int = 1) -> torch.Tensor:
    """Z ⊙ t, divide each class map by its spatial max, renormalise over classes.

    z: class probabilities with the class axis at ``class_dim`` and the spatial axes after it,
    e.g. (B, K, h, w) or (B, K, N). labels: (B, K) multi-hot (background included). Returns
    the same shape. Classes absent from ``labels`` become 0; an all-zero map stays 0; a patch
    where every present class is 0 gets all its mass on the present classes uniformly.
    """
    if class_dim != 1:
        z = z.movedim(class_dim, 1)
    b, k = z.shape[:2]
    t = labels.to(z.dtype).reshape(b, k, *([1] * (z.dim() - 2)))
    masked = z * t
    spatial_max = masked.flatten(2).amax(dim=2).reshape(b, k, *([1] * (z.dim() - 2)))
    normed = masked / spatial_max.clamp_min(MERGE_EPS)
    total = normed.sum(dim=1, keepdim=True)
    uniform = t / t.sum(dim=1, keepdim=True).clamp_min(1.0)
    out = torch.where(total > MERGE_EPS, normed / total.clamp_min(MERGE_EPS), uniform.expand_as(normed))
    if class_dim != 1:
        out = out.movedim(1, class_dim)
    return out
