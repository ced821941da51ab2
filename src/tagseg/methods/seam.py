"""SEAM's training losses (Wang et al., CVPR 2020), as the official code computes them.

Source: YudeWang/SEAM @ 3212261 ``train_SEAM.py`` lines 16-30 (``adaptive_min_pooling_loss``,
``max_onehot``) and 104-141 (the loss block of the training loop), ``tool/visualization.py``
``max_norm``. Golden values recorded from that code: ``tests/golden/seam.json``.

Inputs are the network's outputs for the two views, both upsampled to their view's image size:
``cam`` the raw class maps and ``cam_rv`` the PCM-revised maps, (B, K, H, W) with the
background at channel 0 (the raw map's background channel is never read: the official head has
one, but every loss overwrites or skips it). View 2 is view 1 resized (SEAM: by 0.3).

    L = (L_cls1 + L_cls2)/2 + (L_rvmin1 + L_rvmin2)/2 + L_ER + L_ECR

- L_cls: multi-label soft-margin loss of GAP(cam) over the K−1 foreground classes;
- L_rvmin (``adaptive_min_pooling_loss``): mean ReLU of the h·w/4 smallest per-pixel maxima of
  the label-masked revised foreground maps;
- L_ER: mean |cam1' − cam2'| over foreground channels, cam' = max-norm(cam)·label with view 1
  resized (bilinear, align_corners) to view 2's size;
- L_ECR: for each view, the mean of the top 20 % (``ecr_fraction``) of
  |onehot(other view's cam', background 1 − max fg) − cam_rv'| over K·h·w entries; summed.

All weights are 1 in the official code.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from tagseg.methods.cam_objective import cam_classification_loss

MAX_NORM_EPS = 1e-5
ECR_FRACTION = 0.2  # train_SEAM.py line 137: top 20 % of the K·h·w entries


def max_norm(p: Tensor, eps: float = MAX_NORM_EPS) -> Tensor:
    """Per-map min-max normalisation of ReLU(p): (B, C, H, W) -> relu(p − min − eps) / (max − min + eps),
    min and max of ReLU(p) over each map (``tool/visualization.py`` max_norm, 4-D torch branch)."""
    p = F.relu(p)
    flat = p.flatten(2)
    max_v = flat.max(dim=-1)[0][..., None, None]
    min_v = flat.min(dim=-1)[0][..., None, None]
    return F.relu(p - min_v - eps) / (max_v - min_v + eps)


def adaptive_min_pooling_loss(x: Tensor) -> Tensor:
    """x (B, C, H, W) -> sum over images of ReLU of the H·W//4 smallest per-pixel channel maxima,
    divided by (H·W//4)·B."""
    n, _, h, w = x.shape
    k = h * w // 4
    y = torch.topk(x.max(dim=1)[0].reshape(n, -1), k=k, dim=-1, largest=False)[0]
    return F.relu(y).sum() / (k * n)


def max_onehot(x: Tensor) -> Tensor:
    """(B, K, H, W) -> a copy where each pixel's foreground channels keep only their maximum (ties
    all kept), the others 0; channel 0 (background) unchanged."""
    fg = x[:, 1:]
    keep = fg == fg.max(dim=1, keepdim=True)[0]
    return torch.cat([x[:, :1], torch.where(keep, fg, torch.zeros_like(fg))], dim=1)


def _top_mean(t: Tensor, fraction: float) -> Tensor:
    n, k_ch, h, w = t.shape
    k = int(k_ch * h * w * fraction)
    return torch.topk(t.reshape(n, -1), k=k, dim=-1)[0].mean()


def seam_losses(cam1: Tensor, cam_rv1: Tensor, cam2: Tensor, cam_rv2: Tensor, labels: Tensor,
                ecr_fraction: float = ECR_FRACTION, prior: Optional[Tensor] = None) -> dict[str, Tensor]:
    """SEAM's loss parts for one batch (see the module docstring).

    cam1, cam_rv1: view 1's raw and PCM-revised maps (B, K, H1, W1); cam2, cam_rv2: view 2's
    (B, K, H2, W2); labels (B, K) 0/1 (channel 0, the background, is treated as present whatever
    it holds, as the official code prepends a 1). Returns 'cls1', 'cls2', 'rvmin1', 'rvmin2',
    'er', 'ecr' and 'total' = (cls1 + cls2)/2 + (rvmin1 + rvmin2)/2 + er + ecr. prior: tagseg's
    learnt class prior (K−1,) added to both views' image logits (``cam.class_prior``; the official
    SEAM has none: None); it never enters the maps, so ER, ECR and rvmin do not see it.
    """
    if cam1.dim() != 4 or cam1.shape != cam_rv1.shape or cam2.shape != cam_rv2.shape:
        raise ValueError(f"SEAM maps must be (B, K, H, W) pairs per view, got {tuple(cam1.shape)}, "
                         f"{tuple(cam_rv1.shape)}, {tuple(cam2.shape)}, {tuple(cam_rv2.shape)}")
    lab = labels.to(cam1.dtype).clone()
    lab[:, 0] = 1.0
    mask = lab[:, :, None, None]
    size = tuple(cam2.shape[-2:])
    parts: dict[str, Tensor] = {
        "cls1": cam_classification_loss(cam1[:, 1:], lab, prior),  # CAM's soft-margin loss of GAP, each view
        "cls2": cam_classification_loss(cam2[:, 1:], lab, prior),
        "rvmin1": adaptive_min_pooling_loss((cam_rv1 * mask)[:, 1:]),
        "rvmin2": adaptive_min_pooling_loss((cam_rv2 * mask)[:, 1:]),
    }
    resize = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=True)  # noqa: E731
    n1 = resize(max_norm(cam1)) * mask
    rv1 = resize(max_norm(cam_rv1)) * mask
    n2 = max_norm(cam2) * mask
    rv2 = max_norm(cam_rv2) * mask
    parts["er"] = (n1[:, 1:] - n2[:, 1:]).abs().mean()
    with_bg = lambda t: torch.cat([1 - t[:, 1:].max(dim=1, keepdim=True)[0], t[:, 1:]], dim=1)  # noqa: E731
    n1, n2 = with_bg(n1), with_bg(n2)
    ecr1 = _top_mean((max_onehot(n2.detach()) - rv1).abs(), ecr_fraction)
    ecr2 = _top_mean((max_onehot(n1.detach()) - rv2).abs(), ecr_fraction)
    parts["ecr"] = ecr1 + ecr2
    parts["total"] = ((parts["cls1"] + parts["cls2"]) / 2 + (parts["rvmin1"] + parts["rvmin2"]) / 2
                      + parts["er"] + parts["ecr"])
    return parts
