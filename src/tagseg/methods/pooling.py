"""Patch scores -> image scores (METHODS.md §1, "Pooling").

All functions take patch probabilities ``z`` of shape (B, N, K) (N patches, softmax over K)
and return image scores of shape (B, K) in (0, 1).
"""

from __future__ import annotations

import torch

from tagseg.config import POOLINGS
from tagseg.errors import ConfigError



def avg_pool(z: torch.Tensor) -> torch.Tensor:
    """GAP baseline: y_c = mean_i z_ic."""
    return z.mean(dim=1)


def max_pool(z: torch.Tensor) -> torch.Tensor:
    """ViT-PCM global max pooling: y_c = max_i z_ic (gradient to the arg-max patch only)."""
    return z.max(dim=1).values


def topk_pool(z: torch.Tensor, k: int) -> torch.Tensor:
    """TKP-PCL top-K pooling: y_c = mean of the k largest z_ic over patches.

    k is clamped to N. The gradient reaches exactly those k patches, 1/k each.
    """
    if k < 1:
        raise ConfigError(f"top-K pooling needs k >= 1, got {k}")
    k = min(k, z.shape[1])
    return z.topk(k, dim=1).values.mean(dim=1)


def pool_patch_scores(z: torch.Tensor, method: str, k: int = 6) -> torch.Tensor:
    """Dispatch on the pooling name ('avg', 'max', 'topk')."""
    if method == "avg":
        return avg_pool(z)
    if method == "max":
        return max_pool(z)
    if method == "topk":
        return topk_pool(z, k)
    raise ConfigError(f"unknown pooling {method!r}; choose one of {POOLINGS}")
