"""The pair losses of AffinityNet (PSA ``train_aff.py``) and IRN's class-boundary branch
(``step/train_irn.py``, semantic part).

With a pair affinity a in [0, 1] (PSA: exp(-mean |f_i - f_j|); IRN: 1 - the largest boundary
score on the pair's path):

    bg  = Σ bg_pos · -log(a + ε)       / (Σ bg_pos + ε)
    fg  = Σ fg_pos · -log(a + ε)       / (Σ fg_pos + ε)
    neg = Σ neg    · -log(1 + ε - a)   / (Σ neg + ε)
    total = bg / 4 + fg / 4 + neg / 2                      (ε = 1e-5)

PSA writes the total that way; IRN writes it as ((bg + fg) / 2 + neg) / 2, the same number.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

EPS = 1e-5


class PairLosses(NamedTuple):
    bg: torch.Tensor
    fg: torch.Tensor
    neg: torch.Tensor
    total: torch.Tensor


def pair_losses(aff: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor, neg: torch.Tensor,
                eps: float = EPS) -> PairLosses:
    """The three pair losses and their weighted total (scalars) for affinities ``aff`` in [0, 1]
    and float 0/1 labels of the same (broadcastable) shape."""
    pos_term = -torch.log(aff + eps)
    neg_term = -torch.log(1.0 + eps - aff)
    bg = (bg_pos * pos_term).sum() / (bg_pos.sum() + eps)
    fg = (fg_pos * pos_term).sum() / (fg_pos.sum() + eps)
    ng = (neg * neg_term).sum() / (neg.sum() + eps)
    return PairLosses(bg, fg, ng, bg / 4 + fg / 4 + ng / 2)
