"""Pixel-to-prototype contrast (PPC), an add-on regulariser for the CAM family.

Two views of each image (view 2 = view 1 resized to 128 px) are passed through the
network; a projector turns backbone features into unit vectors ``v`` (B, D, h, w).
Pseudo labels come from the normalised CAMs, class prototypes from the top-scoring
pixels of each class in the whole batch, and an InfoNCE loss against the prototypes
is applied across views (cross-prototype, cross-CAM) and within each view (with
semi-hard prototype mining and hard pixel sampling).

Conventions
-----------
* ``labels`` are multi-hot (B, K), background at index 0.
* ``cam`` is either K-1 raw foreground maps (CAM family, ``has_background=False``;
  channel k-1 is class k) or K maps including background (``has_background=True``,
  e.g. softmax probabilities of a patch classifier).
* Everything derived from CAMs (pseudo labels, prototypes, selections) is computed
  without gradient: PPC's gradient reaches the network only through ``v``.

Choices where the specification leaves room (all reachable through :class:`PPCConfig`)
--------------------------------------------------------------------------------------
* Prototype pixels: the top-K_p pixels *whose pseudo label is c*, ranked by the
  normalised score of c. The background score is a constant (``bg_score``) in the
  foreground-only case, which gives equal weights and no ranking; background pixels
  are then ranked by their lowest foreground activation (``1 - max_c r_c``).
  Classes without any pixel in a view have no prototype in that view; pixels whose
  (transferred) label has no prototype in the prototype set being used are skipped.
* Cross-CAM labels of the other view: the other view's normalised scores are resized
  bilinearly to this view's map size, then arg-maxed.
* Semi-hard prototype mining: per pixel, the negatives are the other valid
  prototypes; the hardest ``ceil(0.6 * n_neg)`` by ``v . p`` form a pool, of which
  ``ceil(0.5 * pool)`` are used: a random subset by default
  (``negative_selection="random"``), or the less hard end of the pool
  (``"less_hard"``, which skips the very hardest ones).
* Hard pixel sampling (per class, intra-view): of the class's ``n`` pixels
  (``n`` optionally capped by ``max_pixels_per_class``), ``n - n//2`` are drawn at
  random and ``n//2`` are the least similar to their prototype; both halves are drawn
  from all the class's pixels, so a pixel may appear in both (hard pixels weigh more).
  The intra loss is the mean over classes of the mean over sampled pixels.
* Totals: ``L_cross = L_cross_prototype + L_cross_cam`` (each the mean of its two
  directions), ``L_intra`` the mean over the two views,
  ``L = 0.1 * L_cross + 0.1 * L_intra``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tagseg.addons.registry import (
    FEATURES, FORMULATIONS, SCORE_MAPS, SHARED_VIEWS, VIEW_HEADS, Addon, BuildContext, LossContext, register_addon,
)
from tagseg.errors import ConfigError, TagsegError

_NEGATIVE_SELECTIONS = ("random", "less_hard")
_FORMULATIONS = FORMULATIONS


@dataclass(frozen=True)
class PPCConfig:
    """The ``addons.ppc`` section: switch and hyper-parameters (defaults from §2)."""

    enabled: bool = False
    proj_dim: int = 128
    view2_size: int = 128  # px; multiple of the family's patch size
    bg_score: float = 0.2  # constant background score of PPC's pseudo labels (CAM family)
    top_k: int = 32  # K_p: pixels per prototype
    temperature: float = 0.1
    cross_weight: float = 0.1
    intra_weight: float = 0.1
    hard_negative_fraction: float = 0.6
    negative_keep_fraction: float = 0.5
    negative_selection: str = "random"  # random | less_hard
    hard_pixel_fraction: float = 0.5
    max_pixels_per_class: Optional[int] = None
    # official: the authors' code (usr922/wseg contrast_train.py), which produced the published
    # numbers; paper: tagseg's earlier reading of the paper (present classes only, max-normalised
    # CAMs, prototypes from pixels labelled with the class, random semi-hard negatives).
    formulation: str = "official"
    projector_dropout: Optional[float] = None  # Dropout2d before the projector; None: 0.5 official, 0 paper

    def __post_init__(self) -> None:
        if self.proj_dim <= 0:
            raise ConfigError(f"addons.ppc.proj_dim={self.proj_dim}: must be > 0")
        if self.view2_size <= 0:  # a multiple of the family's patch size: tagseg.experiment
            raise ConfigError(f"addons.ppc.view2_size={self.view2_size}: must be a positive multiple of "
                              "the patch size")
        if not 0.0 <= self.bg_score <= 1.0:
            raise ConfigError(f"addons.ppc.bg_score={self.bg_score}: must be in [0, 1]")
        if self.top_k <= 0:
            raise ConfigError(f"addons.ppc.top_k={self.top_k}: prototype pixels must be > 0")
        if not self.temperature > 0:
            raise ConfigError(f"addons.ppc.temperature={self.temperature}: must be > 0")
        for name in ("cross_weight", "intra_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"addons.ppc.{name}={getattr(self, name)}: must be >= 0")
        for name in ("hard_negative_fraction", "negative_keep_fraction"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"addons.ppc.{name}={value}: must be in (0, 1]")
        if not 0.0 <= self.hard_pixel_fraction <= 1.0:
            raise ConfigError(f"addons.ppc.hard_pixel_fraction={self.hard_pixel_fraction}: must be in [0, 1]")
        if self.negative_selection not in _NEGATIVE_SELECTIONS:
            raise ConfigError(f"addons.ppc.negative_selection={self.negative_selection!r}: "
                              f"choose {' or '.join(_NEGATIVE_SELECTIONS)}")
        if self.formulation not in _FORMULATIONS:
            raise ConfigError(f"addons.ppc.formulation={self.formulation!r}: choose {' or '.join(_FORMULATIONS)}")
        if self.projector_dropout is not None and not 0.0 <= self.projector_dropout < 1.0:
            raise ConfigError(f"addons.ppc.projector_dropout={self.projector_dropout}: must be in [0, 1)")
        if self.max_pixels_per_class is not None and self.max_pixels_per_class <= 0:
            raise ConfigError(f"addons.ppc.max_pixels_per_class={self.max_pixels_per_class}: must be > 0 or None")


class PPCProjector(nn.Module):
    """[Dropout2d] -> 1x1 conv -> ReLU -> [per-pixel L2 normalisation].

    Input (B, in_dim, h, w) features; output (B, dim, h, w). With ``normalize`` the output is
    unit vectors (a pixel whose ReLU output is all zero stays the zero vector); without it the
    raw ReLU output, as in the official code, whose prototypes average un-normalised features
    (:func:`ppc_loss` normalises the pixel embeddings itself).
    """

    def __init__(self, in_dim: int, dim: int = 128, bias: bool = False, *, dropout: float = 0.0,
                 normalize: bool = True) -> None:
        super().__init__()
        if in_dim <= 0 or dim <= 0:
            raise ConfigError(f"PPCProjector needs positive dimensions, got in_dim={in_dim}, dim={dim}")
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv = nn.Conv2d(in_dim, dim, kernel_size=1, bias=bias)
        self.normalize = normalize

    def forward(self, features: Tensor) -> Tensor:
        out = F.relu(self.conv(self.dropout(features)))
        return F.normalize(out, p=2, dim=1, eps=1e-12) if self.normalize else out

    def view_output(self, features: Tensor) -> Tensor:
        """Run on every view by a network with view heads (``output.addon_maps["ppc"]``)."""
        return self(features)


def make_ppc_view2(images: Tensor, size: int | tuple[int, int] = 128, *, official: bool = False) -> Tensor:
    """View 2 of PPC: the view-1 images (B, 3, H, W) resized bilinearly to ``size`` px.

    ``official``: ``align_corners=True`` without antialiasing, as the official code; otherwise
    antialiased with ``align_corners=False``.
    """
    if images.dim() != 4:
        raise TagsegError(f"make_ppc_view2 expects (B, 3, H, W) images, got shape {tuple(images.shape)}")
    out_size = (size, size) if isinstance(size, int) else tuple(size)
    if min(out_size) <= 0:
        raise ConfigError(f"PPC view-2 size must be positive, got {size}")
    if official:
        return F.interpolate(images, size=out_size, mode="bilinear", align_corners=True)
    return F.interpolate(images, size=out_size, mode="bilinear", align_corners=False, antialias=True)


def _check_maps(name: str, maps: Tensor, labels: Tensor, has_background: bool) -> None:
    if maps.dim() != 4:
        raise TagsegError(f"{name} must be (B, C, h, w), got shape {tuple(maps.shape)}")
    if labels.dim() != 2 or labels.shape[0] != maps.shape[0]:
        raise TagsegError(
            f"labels must be (B, K) with B={maps.shape[0]}, got shape {tuple(labels.shape)}"
        )
    expected = labels.shape[1] if has_background else labels.shape[1] - 1
    if maps.shape[1] != expected:
        kind = "K maps including background" if has_background else "K-1 foreground maps"
        raise TagsegError(
            f"{name} has {maps.shape[1]} channels but labels have K={labels.shape[1]} "
            f"classes ({kind} expected: {expected})"
        )


@torch.no_grad()
def ppc_class_scores(cam: Tensor, labels: Tensor, *, has_background: bool, bg_score: float = 0.2) -> Tensor:
    """Normalised class scores (B, K, h, w) in [0, 1] used for pseudo labels and prototype weights.

    Foreground-only maps: ReLU, divide each map by its spatial max, background channel =
    ``bg_score``. Maps with background: each map divided by its spatial max. In both
    cases classes absent from ``labels`` are set to 0. No gradient.
    """
    _check_maps("cam", cam, labels, has_background)
    cam = cam.detach().float()
    b, _, h, w = cam.shape
    r = F.relu(cam)
    r = r / r.flatten(2).amax(dim=2).clamp_min(1e-5).view(b, -1, 1, 1)
    if not has_background:
        bg = torch.full((b, 1, h, w), float(bg_score), dtype=r.dtype, device=r.device)
        r = torch.cat([bg, r], dim=1)
    return r * (labels.to(r.dtype) > 0).view(b, -1, 1, 1)


def ppc_pseudo_labels(scores: Tensor) -> Tensor:
    """Arg-max over classes of (B, K, h, w) scores -> (B, h, w) long (ties go to the lower index)."""
    return scores.argmax(dim=1)


@torch.no_grad()
def ppc_prototypes(
    v: Tensor, scores: Tensor, pseudo: Tensor, top_k: int = 32, rank: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Class prototypes from one view of the whole batch (no gradient).

    ``v`` (B, D, h, w) pixel embeddings, ``scores`` (B, K, h, w) normalised scores
    (weights), ``pseudo`` (B, h, w) pseudo labels, ``rank`` (B, K, h, w) ranking key
    (defaults to ``scores``). For each class c: among the pixels labelled c, the
    ``top_k`` with the largest ``rank[:, c]``; p_c = sum(w v) / sum(w) with
    w = scores[:, c], then L2-normalised.

    Returns ``(prototypes (K, D), valid (K,) bool)``; invalid rows (no pixel) are zero.
    """
    if top_k <= 0:
        raise ConfigError(f"PPC top_k must be positive, got {top_k}")
    k = scores.shape[1]
    d = v.shape[1]
    flat_v = v.detach().permute(0, 2, 3, 1).reshape(-1, d).float()
    flat_w = scores.permute(0, 2, 3, 1).reshape(-1, k).float()
    flat_r = flat_w if rank is None else rank.permute(0, 2, 3, 1).reshape(-1, k).float()
    flat_y = pseudo.reshape(-1)
    protos = torch.zeros(k, d, dtype=flat_v.dtype, device=v.device)
    valid = torch.zeros(k, dtype=torch.bool, device=v.device)
    for c in torch.unique(flat_y).tolist():
        idx = (flat_y == c).nonzero(as_tuple=True)[0]
        n = min(top_k, idx.numel())
        top = idx[torch.topk(flat_r[idx, c], n).indices]
        weights = flat_w[top, c]
        total = weights.sum()
        if total <= 0:  # degenerate scores: fall back to the plain mean
            weights = torch.ones_like(weights)
            total = weights.sum()
        protos[c] = F.normalize((weights[:, None] * flat_v[top]).sum(0) / total, dim=0, eps=1e-12)
        valid[c] = True
    return protos.to(v.dtype), valid


def prototype_nce(v: Tensor, y: Tensor, protos: Tensor, valid: Tensor, temperature: float) -> Tensor:
    """Per-pixel F(v, y, P) = -log(exp(v.p_y/t) / sum_c exp(v.p_c/t)) over valid prototypes.

    ``v`` (N, D) unit vectors, ``y`` (N,) labels, ``protos`` (K, D), ``valid`` (K,).
    Pixels whose label has no valid prototype are dropped; returns (N',) losses.
    """
    keep = valid[y]
    v, y = v[keep], y[keep]
    logits = v @ protos.t() / temperature
    logits = logits.masked_fill(~valid[None, :], float("-inf"))
    return torch.logsumexp(logits, dim=1) - logits.gather(1, y[:, None]).squeeze(1)


def _count(fraction: float, n: int) -> int:
    return min(n, math.ceil(fraction * n - 1e-9))


def semi_hard_negative_mask(
    sims: Tensor,
    y: Tensor,
    valid: Tensor,
    cfg: PPCConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(N, K) bool mask of the negatives each pixel uses (semi-hard prototype mining).

    ``sims`` (N, K) similarities v . p (only their order matters; no gradient).
    Negatives of pixel i: valid prototypes other than y_i. The hardest
    ``ceil(hard_negative_fraction * n_neg)`` form the pool; ``ceil(negative_keep_fraction
    * pool)`` of the pool are kept (random subset, or the less hard end).
    """
    sims = sims.detach()
    n_pix, k = sims.shape
    is_pos = torch.zeros_like(sims, dtype=torch.bool)
    is_pos[torch.arange(n_pix, device=sims.device), y] = True
    is_neg = valid[None, :] & ~is_pos
    n_neg = int(valid.sum().item()) - 1
    mask = torch.zeros_like(is_neg)
    if n_neg <= 0 or n_pix == 0:
        return mask
    n_pool = max(1, _count(cfg.hard_negative_fraction, n_neg))
    n_keep = max(1, _count(cfg.negative_keep_fraction, n_pool))
    order = sims.masked_fill(~is_neg, float("-inf")).argsort(dim=1, descending=True)[:, :n_pool]
    if cfg.negative_selection == "random":
        keys = torch.rand(n_pix, n_pool, generator=generator).to(sims.device)
        chosen = order.gather(1, keys.topk(n_keep, dim=1).indices)
    else:  # "less_hard": the easier end of the hard pool
        chosen = order[:, n_pool - n_keep:]
    mask.scatter_(1, chosen, True)
    return mask & is_neg


def intra_view_loss(
    v: Tensor,
    y: Tensor,
    protos: Tensor,
    valid: Tensor,
    cfg: PPCConfig,
    generator: torch.Generator | None = None,
) -> Tensor | None:
    """Intra-view loss of one view: semi-hard prototype mining and hard pixel sampling.

    ``v`` (N, D) unit vectors, ``y`` (N,) pseudo labels, ``protos`` (K, D) / ``valid`` (K,)
    this view's prototypes. Per class: ``n - floor(hard_pixel_fraction * n)`` random
    pixels plus the ``floor(hard_pixel_fraction * n)`` least similar to their prototype;
    the loss is the mean over classes of the class's mean. None when no pixel qualifies.
    """
    keep = valid[y]
    v, y = v[keep], y[keep]
    if y.numel() == 0:
        return None
    logits = v @ protos.t() / cfg.temperature
    pos = logits.gather(1, y[:, None]).squeeze(1)
    neg_mask = semi_hard_negative_mask(logits, y, valid, cfg, generator)
    used = neg_mask.clone()
    used[torch.arange(y.numel(), device=y.device), y] = True
    per_pixel = torch.logsumexp(logits.masked_fill(~used, float("-inf")), dim=1) - pos
    class_losses = []
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero(as_tuple=True)[0]
        n = idx.numel() if cfg.max_pixels_per_class is None else min(idx.numel(), cfg.max_pixels_per_class)
        n_hard = int(math.floor(cfg.hard_pixel_fraction * n))
        n_rand = n - n_hard
        perm = torch.randperm(idx.numel(), generator=generator)[:n_rand].to(idx.device)
        hardest = torch.topk(pos[idx].detach(), n_hard, largest=False).indices
        chosen = torch.cat([idx[perm], idx[hardest]])
        class_losses.append(per_pixel[chosen].mean())
    return torch.stack(class_losses).mean()


def _mean_defined(values: list[Tensor | None], anchor: Tensor) -> Tensor:
    defined = [x for x in values if x is not None]
    if not defined:
        return anchor.sum() * 0.0
    return torch.stack(defined).mean()


def _mean_or_none(x: Tensor) -> Tensor | None:
    return x.mean() if x.numel() > 0 else None


def _flat(v: Tensor) -> Tensor:
    return v.permute(0, 2, 3, 1).reshape(-1, v.shape[1])


def _background_rank(scores: Tensor, has_background: bool) -> Tensor:
    """Ranking key for prototype pixels: scores, with a usable key for a constant background."""
    if has_background:
        return scores
    rank = scores.clone()
    rank[:, 0] = 1.0 - scores[:, 1:].amax(dim=1) if scores.shape[1] > 1 else 1.0
    return rank


def ppc_loss(
    v1: Tensor,
    cam1: Tensor,
    v2: Tensor,
    cam2: Tensor,
    labels: Tensor,
    cfg: PPCConfig = PPCConfig(),
    *,
    has_background: bool = False,
    generator: torch.Generator | None = None,
    pixel_sampler: Optional[Callable[[int, int], Tensor]] = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPC loss of two views in the configured formulation (:func:`ppc_loss_official` or
    :func:`ppc_loss_paper`); same arguments and returns as those."""
    if cfg.formulation == "official":
        return ppc_loss_official(v1, cam1, v2, cam2, labels, cfg, has_background=has_background,
                                 generator=generator, pixel_sampler=pixel_sampler)
    return ppc_loss_paper(v1, cam1, v2, cam2, labels, cfg, has_background=has_background, generator=generator)


def ppc_loss_paper(
    v1: Tensor,
    cam1: Tensor,
    v2: Tensor,
    cam2: Tensor,
    labels: Tensor,
    cfg: PPCConfig = PPCConfig(),
    *,
    has_background: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPC loss of two views, tagseg's reading of the paper (``formulation: paper``).

    ``v1`` (B, D, h1, w1) and ``v2`` (B, D, h2, w2) projector outputs (re-normalised
    here), ``cam1`` / ``cam2`` the matching score maps at the same spatial sizes,
    ``labels`` (B, K) multi-hot. Returns the scalar ``cross_weight * L_cross +
    intra_weight * L_intra`` and detached parts ``cross_prototype``, ``cross_cam``,
    ``intra`` and ``total``. Gradient flows only into ``v1`` and ``v2``.
    """
    for name, v, cam in (("view 1", v1, cam1), ("view 2", v2, cam2)):
        _check_maps(f"cam of {name}", cam, labels, has_background)
        if v.dim() != 4 or v.shape[0] != cam.shape[0] or v.shape[2:] != cam.shape[2:]:
            raise TagsegError(
                f"PPC {name}: embeddings {tuple(v.shape)} and CAM {tuple(cam.shape)} must share "
                "batch size and spatial size"
            )
    if v1.shape[1] != v2.shape[1]:
        raise TagsegError(f"PPC views have different embedding sizes: {v1.shape[1]} vs {v2.shape[1]}")

    v1 = F.normalize(v1, dim=1, eps=1e-12)
    v2 = F.normalize(v2, dim=1, eps=1e-12)
    s1 = ppc_class_scores(cam1, labels, has_background=has_background, bg_score=cfg.bg_score)
    s2 = ppc_class_scores(cam2, labels, has_background=has_background, bg_score=cfg.bg_score)
    y1, y2 = ppc_pseudo_labels(s1), ppc_pseudo_labels(s2)
    p1, ok1 = ppc_prototypes(v1, s1, y1, cfg.top_k, _background_rank(s1, has_background))
    p2, ok2 = ppc_prototypes(v2, s2, y2, cfg.top_k, _background_rank(s2, has_background))
    with torch.no_grad():
        y2_on_1 = ppc_pseudo_labels(F.interpolate(s2, size=s1.shape[2:], mode="bilinear", align_corners=False))
        y1_on_2 = ppc_pseudo_labels(F.interpolate(s1, size=s2.shape[2:], mode="bilinear", align_corners=False))

    f1, f2 = _flat(v1), _flat(v2)
    t = cfg.temperature
    cross_proto = _mean_defined(
        [
            _mean_or_none(prototype_nce(f1, y1.reshape(-1), p2, ok2, t)),
            _mean_or_none(prototype_nce(f2, y2.reshape(-1), p1, ok1, t)),
        ],
        f1,
    )
    cross_cam = _mean_defined(
        [
            _mean_or_none(prototype_nce(f1, y2_on_1.reshape(-1), p1, ok1, t)),
            _mean_or_none(prototype_nce(f2, y1_on_2.reshape(-1), p2, ok2, t)),
        ],
        f1,
    )
    intra = _mean_defined(
        [
            intra_view_loss(f1, y1.reshape(-1), p1, ok1, cfg, generator),
            intra_view_loss(f2, y2.reshape(-1), p2, ok2, cfg, generator),
        ],
        f1,
    )
    total = cfg.cross_weight * (cross_proto + cross_cam) + cfg.intra_weight * intra
    parts = {
        "cross_prototype": cross_proto.detach(),
        "cross_cam": cross_cam.detach(),
        "intra": intra.detach(),
        "total": total.detach(),
    }
    return total, parts


# ----------------------------------------------------------------------------- official
# The formulation of the official code (usr922/wseg @ e96b961, contrast_train.py 179-392),
# which produced the paper's numbers. Differences from the paper reading above:
# (P1) the source view's embeddings and CAMs are resized (bilinear, align_corners=True) to the
# target view's grid before every term; (P2) all K prototypes are used, absent classes
# included, and every InfoNCE denominator runs over all of them; (P3) a prototype averages the
# top h*w/8 pixels of its class's normalised CAM over the whole batch (h, w: one image's grid),
# whatever their pseudo label; (P4) CAMs are min-max normalised (with the code's exact
# arithmetic, including the slightly negative value it gives pixels at the minimum) and the
# background channel is the constant bg_score; (P6) semi-hard mining ranks all K prototypes
# (the positive's own included), keeps the top 13 and drops the top 3; (P7) hard pixels skip
# the hardest int(0.6 n) - n//2 (about 10 %) and take the next n//2; n//2 further pixels are
# drawn at random; a class with a single pixel counts in the mean over classes but adds 0.

PixelSampler = Callable[[int, int], Tensor]


def _official_pixel_sampler(generator: torch.Generator | None) -> PixelSampler:
    def sample(n: int, k: int) -> Tensor:
        return torch.randperm(n, generator=generator)[:k]
    return sample


@torch.no_grad()
def ppc_official_scores(cam: Tensor, labels: Tensor, *, has_background: bool, bg_score: float = 0.2) -> Tensor:
    """Min-max normalised scores (B, K, h, w) as the official code computes them (no gradient).

    ReLU; per image and class, values below min + 1e-5 are set to 0, then
    (x - min - 1e-5) / (max - min + 1e-5). The background channel is the constant ``bg_score``
    for foreground-only maps (the official case); maps with background keep their normalised
    background. Absent classes are *not* zeroed here (prototypes use them); see
    :func:`ppc_official_pseudo_labels`.
    """
    _check_maps("cam", cam, labels, has_background)
    cam = F.relu(cam.detach().float())
    if not has_background:
        cam = torch.cat([torch.zeros_like(cam[:, :1]), cam], dim=1)
    n, c = cam.shape[:2]
    flat = cam.reshape(n, c, -1)
    mx = flat.max(dim=-1)[0].view(n, c, 1, 1)
    mn = flat.min(dim=-1)[0].view(n, c, 1, 1)
    cam = cam.masked_fill(cam < mn + 1e-5, 0.0)
    out = (cam - mn - 1e-5) / (mx - mn + 1e-5)
    if not has_background:
        out[:, 0] = bg_score
    return out


def ppc_official_pseudo_labels(scores: Tensor, labels: Tensor) -> Tensor:
    """(B, h, w) arg-max of the scores times the image labels, background always present (the
    official label vector starts with a 1; its softmax does not change the arg-max)."""
    present = labels > 0
    present[:, 0] = True
    return (scores * present.to(scores.dtype).view(*labels.shape, 1, 1)).softmax(dim=1).argmax(dim=1)


@torch.no_grad()
def ppc_official_prototypes(v: Tensor, scores: Tensor, top_k: int | None = None) -> Tensor:
    """All K prototypes (K, D) from one view of the batch, as the official code builds them.

    ``v`` (B, D, h, w) projector outputs (not normalised), ``scores`` (B, K, h, w) from
    :func:`ppc_official_scores`. Class c: the ``top_k`` (default h*w // 8) largest
    ``scores[:, c]`` over all of the batch's pixels, p_c = sum(s v) / sum(s), L2-normalised.
    """
    b, k, h, w = scores.shape
    d = v.shape[1]
    n_top = top_k if top_k is not None else max(1, h * w // 8)
    fea = v.detach().float().permute(0, 2, 3, 1).reshape(-1, d)
    vals, idx = torch.topk(scores.transpose(0, 1).reshape(k, -1), k=min(n_top, b * h * w), dim=-1)
    protos = torch.zeros(k, d, dtype=fea.dtype, device=fea.device)
    for c in range(k):
        weights, total = vals[c], vals[c].sum()
        if total == 0:  # the official code divides by zero here; a plain mean instead
            weights, total = torch.ones_like(weights), float(weights.numel())
        protos[c] = torch.sum(weights.unsqueeze(-1) * fea[idx[c]], dim=0) / total
    return F.normalize(protos, dim=-1)


def _official_nce(f: Tensor, y: Tensor, protos: Tensor, t: float) -> Tensor:
    """Mean over pixels of -log(exp(f.p_y/t) / sum_k exp(f.p_k/t)); f (N, D) unit, protos (K, D)."""
    pos = torch.sum(f * protos[y], dim=-1) / t
    return torch.mean(torch.logsumexp(f @ protos.t() / t, dim=-1) - pos)


def ppc_official_intra(
    f: Tensor, y: Tensor, protos: Tensor, cfg: PPCConfig, sampler: PixelSampler, *, drop_hardest: int = 3, n_negatives: int = 10
) -> Tensor:
    """Official intra-view loss of one view: f (N, D) unit vectors, y (N,), protos (K, D).

    Negatives: the prototypes ranked ``drop_hardest`` + 1 to ``drop_hardest + n_negatives`` by
    f.p over all K (the positive's own prototype is not excluded). Per class present in y:
    ``n // 2`` pixels from ``sampler(n, n // 2)`` and the ``n // 2`` next-to-hardest by
    (1 + f.p_y) / 2; the loss is the sum of the classes' means over the number of classes.
    """
    t = cfg.temperature
    pos_cos = torch.sum(f * protos[y], dim=-1)
    similarity = (pos_cos + 1) / 2.0
    neg_scores = f @ protos.t()
    with torch.no_grad():
        k_top = min(drop_hardest + n_negatives, protos.shape[0])
        chosen = torch.topk(neg_scores, k=k_top, largest=True, dim=-1)[1][:, drop_hardest:]
    per_pixel = torch.logsumexp(
        torch.cat([pos_cos.unsqueeze(1), neg_scores.gather(1, chosen)], dim=1) / t, dim=-1) - pos_cos / t
    total = f.new_zeros(())
    n_classes = 0
    for c in torch.unique(y).tolist():
        n_classes += 1
        idx = (y == c).nonzero(as_tuple=True)[0]
        n = idx.numel()
        if n < 2:
            continue
        with torch.no_grad():
            rand = sampler(n, n // 2).to(idx.device)
            n_low = int(n * 0.6)
            lower = torch.topk(similarity[idx], k=n_low, largest=False)[1][n_low - n // 2:]
        total = total + torch.mean(torch.cat([per_pixel[idx][rand], per_pixel[idx][lower]]))
    return total / max(n_classes, 1)


def ppc_loss_official(
    v1: Tensor,
    cam1: Tensor,
    v2: Tensor,
    cam2: Tensor,
    labels: Tensor,
    cfg: PPCConfig = PPCConfig(),
    *,
    has_background: bool = False,
    generator: torch.Generator | None = None,
    pixel_sampler: Optional[PixelSampler] = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPC loss of two views as the official code computes it (``formulation: official``).

    ``v1`` (B, D, h1, w1) and ``v2`` (B, D, h2, w2) projector outputs (raw ReLU features;
    normalised here per pixel), ``cam1`` / ``cam2`` score maps at the matching sizes,
    ``labels`` (B, K) multi-hot. View 1 and its CAM are first resized (bilinear,
    align_corners=True) to view 2's grid. ``pixel_sampler(n, k)`` returns the k random pixel
    indices of hard pixel sampling (default: a permutation from ``generator``). Returns the
    scalar ``cross_weight * (L_cross_prototype + L_cross_cam) + intra_weight * L_intra``
    (each the mean of its two directions) and detached unweighted parts. Gradient flows
    only into ``v1`` and ``v2``.
    """
    for name, v, cam in (("view 1", v1, cam1), ("view 2", v2, cam2)):
        _check_maps(f"cam of {name}", cam, labels, has_background)
        if v.dim() != 4 or v.shape[0] != cam.shape[0] or v.shape[2:] != cam.shape[2:]:
            raise TagsegError(
                f"PPC {name}: embeddings {tuple(v.shape)} and CAM {tuple(cam.shape)} must share "
                "batch size and spatial size"
            )
    if v1.shape[1] != v2.shape[1]:
        raise TagsegError(f"PPC views have different embedding sizes: {v1.shape[1]} vs {v2.shape[1]}")
    sampler = pixel_sampler or _official_pixel_sampler(generator)
    grid = v2.shape[2:]
    if v1.shape[2:] != grid:
        v1 = F.interpolate(v1, size=grid, mode="bilinear", align_corners=True)
        cam1 = F.interpolate(cam1.detach(), size=grid, mode="bilinear", align_corners=True)
    s1 = ppc_official_scores(cam1, labels, has_background=has_background, bg_score=cfg.bg_score)
    s2 = ppc_official_scores(cam2, labels, has_background=has_background, bg_score=cfg.bg_score)
    y1 = ppc_official_pseudo_labels(s1, labels).reshape(-1)
    y2 = ppc_official_pseudo_labels(s2, labels).reshape(-1)
    p1 = ppc_official_prototypes(v1, s1)
    p2 = ppc_official_prototypes(v2, s2)
    f1 = F.normalize(_flat(v1), dim=-1)
    f2 = F.normalize(_flat(v2), dim=-1)
    t = cfg.temperature
    cross_proto = (_official_nce(f1, y1, p2, t) + _official_nce(f2, y2, p1, t)) / 2
    cross_cam = (_official_nce(f1, y2, p1, t) + _official_nce(f2, y1, p2, t)) / 2
    intra = (ppc_official_intra(f1, y1, p1, cfg, sampler) + ppc_official_intra(f2, y2, p2, cfg, sampler)) / 2
    total = cfg.cross_weight * (cross_proto + cross_cam) + cfg.intra_weight * intra
    parts = {
        "cross_prototype": cross_proto.detach(),
        "cross_cam": cross_cam.detach(),
        "intra": intra.detach(),
        "total": total.detach(),
    }
    return total, parts


# ----------------------------------------------------------------------------- plug-in
# The projector is the module ``net.addons["ppc"]``, on the family's per-location features. A
# family with VIEW_HEADS runs it on every view in its forward pass (``output.addon_maps["ppc"]``),
# otherwise it runs here on the features the family hands over. View 2 runs in the family's
# forward pass when it offers SHARED_VIEWS, otherwise here as a second pass. The score maps
# (foreground CAMs with a constant background, or class probabilities with background) give the
# pseudo labels: the family's label maps of each view.
# On SEAM this is where usr922/wseg contrast_train.py (lines 179-392) places PPC: view 2 is the
# 128 px copy SEAM's own losses use too, prototypes and pseudo labels come from each view's
# PCM-revised maps (SEAM's label maps, background replaced by ``bg_score``), the embeddings from the
# projector on each view's encoder features, and L_PPC is added with weight 1.


def _attach(s: PPCConfig, ctx: BuildContext) -> nn.Module:
    official = s.formulation == "official"
    dropout = s.projector_dropout if s.projector_dropout is not None else (0.5 if official else 0.0)
    return PPCProjector(ctx.feature_dim, s.proj_dim, dropout=dropout, normalize=not official)


def _view2(images: Tensor, s: PPCConfig) -> Tensor:
    return make_ppc_view2(images, s.view2_size, official=s.formulation == "official")


def _views(images: Tensor, s: PPCConfig) -> list[Tensor]:
    return [_view2(images, s)]


def _loss_terms(ctx: LossContext, s: PPCConfig) -> tuple[dict[str, Tensor], Tensor]:
    projector = ctx.core.addons["ppc"]
    out2 = ctx.view_outputs[0] if ctx.offers(SHARED_VIEWS) else ctx.model(_view2(ctx.images, s))
    if ctx.offers(VIEW_HEADS):
        v1, v2 = ctx.output.addon_maps["ppc"], out2.addon_maps["ppc"]
    else:
        v1, v2 = projector(ctx.features), projector(ctx.view_features(out2))
    loss, _ = ppc_loss(v1.float(), ctx.label_maps.float(), v2.float(), ctx.view_label_maps(out2).float(),
                       ctx.labels, s, has_background=ctx.has_background)
    return {"ppc": loss}, loss


ADDON = register_addon(Addon(name="ppc", settings=PPCConfig, requires={"enabled": frozenset({FEATURES, SCORE_MAPS})},
                             attach=_attach, views=_views, loss_terms=_loss_terms, patch_sized=("view2_size",)))
