"""Image-level and classifier losses of METHODS.md §1: MCE and the classifier L2 penalty."""

from __future__ import annotations

import torch
import torch.nn.functional as F

MCE_EPS = 1e-7


def multilabel_ce(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MCE: mean over batch and all K classes of BCE(t_c, y_c), with y clamped to [1e-7, 1-1e-7].

    scores: (B, K) image scores in (0, 1); labels: (B, K) in {0, 1}. Returns a scalar.
    """
    y = scores.float().clamp(MCE_EPS, 1.0 - MCE_EPS)
    return F.binary_cross_entropy(y, labels.float(), reduction="mean")


def l2_penalty(weight: torch.Tensor, coefficient: float = 0.01) -> torch.Tensor:
    """coefficient * ||W||^2 (sum of squares) of the patch classifier's weight."""
    return coefficient * weight.float().pow(2).sum()
