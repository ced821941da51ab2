"""Patch contrastive error (PCE) of TKP-PCL (METHODS.md §1, "Losses").

For each image and each present class c: high-confidence patches H_c = {i: sg(Z_ic) > τ_h},
the low-confidence patch(es) L_c = the m patches with the smallest sg(Z_ic);
PCE_c = -(1/N_hh) Σ_{i<j∈H_c} log s_ij - (1/N_hl) Σ_{i∈H_c, l∈L_c} log(1 - s_il),
s_ij = (cos(f_i, f_j) + 1) / 2 clamped to [1e-6, 1-1e-6]. The patch selection is made under
stop-gradient: the loss reaches the features f only, never the probabilities Z.

Reductions (``method.pce_reduction``; the paper's Eqs. 5-6 leave it unstated, see docs/CHOICES.md):

- ``pair_mean``: each term divided by its pair count (N_hh, N_hl), as written above;
- ``class_sum``: each term summed over its pairs (no division), so a class with many confident
  patches weighs more; both then average over the valid (image, class) pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tagseg.config import PCE_REDUCTIONS

SIM_EPS = 1e-6


def patch_similarity(features: torch.Tensor) -> torch.Tensor:
    """features (N, D) -> s (N, N) = (cos + 1) / 2, clamped to [1e-6, 1 - 1e-6]."""
    f = F.normalize(features.float(), dim=-1)
    return ((f @ f.t() + 1.0) / 2.0).clamp(SIM_EPS, 1.0 - SIM_EPS)


def patch_contrastive_error(
    features: torch.Tensor,
    probs: torch.Tensor,
    labels: torch.Tensor,
    threshold: float = 0.85,
    num_low: int = 1,
    skip_background: bool = False,
    reduction: str = "pair_mean",
) -> torch.Tensor:
    """L_PCE averaged over valid (image, class) pairs; 0 (with a graph) when there are none.

    features: (B, N, D) patch features f (HV-BiLSTM output, before the classifier dropout).
    probs: (B, N, K) softmax patch probabilities Z (only used under stop-gradient).
    labels: (B, K) multi-hot image labels (background included).
    num_low: how many lowest-scoring patches form the low-confidence set (1 = the paper's argmin).
    skip_background: leave class 0 out of the pairs (the spec applies PCE to every present class).
    reduction: 'pair_mean' (divide each term by its pair count) or 'class_sum' (sum over pairs).
    """
    if reduction not in PCE_REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: choose one of {PCE_REDUCTIONS}")
    pair_mean = reduction == "pair_mean"
    z = probs.detach()
    b, n, k = z.shape
    num_low = max(1, min(num_low, n))
    triu = torch.triu(torch.ones(n, n, dtype=torch.bool, device=z.device), diagonal=1)
    terms = []
    for i in range(b):
        classes = torch.nonzero(labels[i] > 0.5).flatten()
        if skip_background:
            classes = classes[classes != 0]
        if classes.numel() == 0:
            continue
        zc = z[i][:, classes].t()  # (C, N)
        high = zc > threshold  # (C, N)
        n_high = high.sum(dim=1)  # (C,)
        valid = n_high > 0
        if not bool(valid.any()):
            continue
        s = patch_similarity(features[i])  # (N, N)
        neg_log_pos = -torch.log(s).masked_fill(~triu, 0.0)  # upper triangle only: pairs i<j
        hf = high.to(s.dtype)
        pos_sum = ((hf @ neg_log_pos) * hf).sum(dim=1)  # Σ_{i<j ∈ H_c}
        n_pairs = n_high * (n_high - 1) / 2
        pos_term = torch.where(n_high >= 2, pos_sum / n_pairs.clamp_min(1) if pair_mean else pos_sum,
                               torch.zeros_like(pos_sum))
        low_idx = zc.topk(num_low, dim=1, largest=False).indices  # (C, m)
        neg_log_neg = -torch.log(1.0 - s)  # (N, N)
        s_low = neg_log_neg[:, low_idx.flatten()].t().reshape(len(classes), num_low, n)  # (C, m, N)
        neg_sum = (s_low.mean(dim=1) * hf).sum(dim=1)
        neg_term = neg_sum / n_high.clamp_min(1) if pair_mean else neg_sum
        terms.append((pos_term + neg_term)[valid])
    if not terms:
        return features.sum() * 0.0
    return torch.cat(terms).mean()
