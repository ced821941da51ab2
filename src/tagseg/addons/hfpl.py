"""HFPL add-on: binomial importance sampling (ISL) and the feature similarity loss (FSL).

Conventions: score maps are (B, C, h, w); ``labels`` are multi-hot (B, K) with the
background at index 0. ``has_background=False`` means C = K-1 foreground maps (CAM
family, channel k-1 is class k); ``has_background=True`` means C = K maps including
background (patch-classifier family). ``from_logits`` says whether the maps are raw
scores (passed through a sigmoid) or already probabilities.

FSL (§3 of the method specification), per image with n = h*w map cells:

    L_fs = -(1/n) * sum_{i,j} w_ij * g_ij * f_ij
    w_ij = exp(-|p_i - p_j|^2 / (2 sigma^2)) / (2 pi sigma^2)     (p in map cells)
    g_ij = 0.5 * |r_i - r_j|^2,   r = ReLU(s) / spatial max, present classes only
    f_ij = tanh(mu + log(delta / (1 - delta))),  delta = |x_i - x_j|_1 / 3

with x the image resized (bilinear, antialiased) to the map. ``w`` and ``f`` are
constants: the gradient flows only through ``g``. The batch loss is the mean over
images. Because ``W = w * f`` is symmetric, ``sum_ij W_ij g_ij = sum_i d_i |r_i|^2 -
sum_i r_i . (W r)_i`` with ``d = W 1``; :func:`feature_similarity_loss` accumulates
``d`` and ``W r`` block by block (never holding all n^2 pairs) and rebuilds the exact
value and gradient from them. ``window`` (in units of sigma) optionally drops pairs
farther apart than ``window * sigma`` cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from tagseg.addons.registry import CAM_LOGITS, FORMULATIONS, SCORE_MAPS, Addon, LossContext, register_addon
from tagseg.errors import ConfigError, TagsegError

SAMPLING_EPS = 1e-5
BCE_CLAMP = 1e-7


@dataclass(frozen=True)
class HFPLConfig:
    """The ``addons.hfpl`` section: switches and hyper-parameters (defaults from §3).

    ``isl``: importance sampling (CAM family: L_cls = (1−λ)·BCE(GAP) + λ·ISL; patch family:
    (1−λ)·MCE(pooling) + λ·MCE(importance pooling)); ``fsl``: feature similarity (CAM family only).
    ``fsl_weight`` (the factor of L_fs) is not fixed by the specification; 1.0 is the project
    default. ``block`` is the number of map cells per block in the FSL computation; ``window``
    (None = all pairs) truncates the FSL at ``window * sigma`` cells.
    """

    isl: bool = False
    fsl: bool = False
    lam: float = 0.2
    n_samples: int = 10  # N
    sigma: float = 5.0
    mu: float = 2.5
    fsl_weight: float = 1.0
    block: int = 1024  # map cells per block of the FSL pair sums
    window: Optional[float] = None  # FSL pairs within window·σ cells; None = all pairs (exact)
    fsl_background: bool = True  # FSL over [1 − max_c r_c, r] (the paper's code); false: foreground maps only
    # official: as the authors' code (arvijj/hfpl train_cam_voc.py, tool/probutils.py), which produced
    # the published numbers: ISL is multilabel_soft_margin_loss on the sampled *logits*, FSL maps are
    # min-max normalised and the image is resized with align_corners=True (no antialiasing);
    # paper: tagseg's earlier reading (clamped BCE on sampled probabilities, max-normalised maps,
    # antialiased resize).
    formulation: str = "official"
    # The paper's setting for Adam-trained baselines, which its code does not contain: ISL and FSL
    # scaled by 0.1 (isl_weight=0.1, fsl_weight=0.1) and maps smaller than about 56 cells upsampled
    # (min_map_size=56) before ISL and FSL. Defaults follow the code (1.0, None).
    isl_weight: float = 1.0
    min_map_size: Optional[int] = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"addons.hfpl.lam={self.lam}: must be in [0, 1]")
        if self.n_samples <= 0:
            raise ConfigError(f"addons.hfpl.n_samples={self.n_samples}: importance sampling needs N >= 1 samples")
        if not self.sigma > 0:
            raise ConfigError(f"addons.hfpl.sigma={self.sigma}: must be > 0")
        if not math.isfinite(self.mu):
            raise ConfigError(f"addons.hfpl.mu={self.mu}: must be finite")
        if self.fsl_weight < 0:
            raise ConfigError(f"addons.hfpl.fsl_weight={self.fsl_weight}: must be >= 0")
        if self.block <= 0:
            raise ConfigError(f"addons.hfpl.block={self.block}: must be > 0")
        if self.window is not None and not self.window > 0:
            raise ConfigError(f"addons.hfpl.window={self.window}: must be > 0 or None")
        if self.formulation not in FORMULATIONS:
            raise ConfigError(f"addons.hfpl.formulation={self.formulation!r}: choose official or paper")
        if self.isl_weight < 0:
            raise ConfigError(f"addons.hfpl.isl_weight={self.isl_weight}: must be >= 0")
        if self.min_map_size is not None and self.min_map_size <= 0:
            raise ConfigError(f"addons.hfpl.min_map_size={self.min_map_size}: must be > 0 or None")


def channel_targets(maps: Tensor, labels: Tensor, has_background: bool) -> Tensor:
    """(B, C) targets matching the map channels; checks the shapes."""
    if maps.dim() != 4:
        raise TagsegError(f"score maps must be (B, C, h, w), got shape {tuple(maps.shape)}")
    if labels.dim() != 2 or labels.shape[0] != maps.shape[0]:
        raise TagsegError(f"labels must be (B, K) with B={maps.shape[0]}, got shape {tuple(labels.shape)}")
    targets = labels if has_background else labels[:, 1:]
    if targets.shape[1] != maps.shape[1]:
        kind = "K maps including background" if has_background else "K-1 foreground maps"
        raise TagsegError(
            f"score maps have {maps.shape[1]} channels but labels have K={labels.shape[1]} ({kind} expected)"
        )
    return targets.to(maps.dtype)


def _bce(p: Tensor, t: Tensor) -> Tensor:
    p = p.clamp(BCE_CLAMP, 1.0 - BCE_CLAMP)
    return -(t * torch.log(p) + (1.0 - t) * torch.log1p(-p))


def importance_sample(values: Tensor, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``n_samples`` positions per (image, channel) with probability proportional to ``values``.

    ``values`` (B, C, h, w) non-negative. Sampling uses the detached values (with
    replacement); the returned (B, C, n_samples) tensor gathers ``values`` itself, so
    gradient flows through the sampled values only.
    """
    if n_samples <= 0:
        raise ConfigError(f"n_samples must be positive, got {n_samples}")
    b, c = values.shape[:2]
    flat = values.reshape(b * c, -1)
    weights = flat.detach().float()
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise TagsegError("importance sampling weights must be finite and non-negative")
    device = generator.device if generator is not None else weights.device
    idx = torch.multinomial(weights.to(device), n_samples, replacement=True, generator=generator)
    return flat.gather(1, idx.to(values.device)).view(b, c, n_samples)


def importance_sampling_loss(
    scores: Tensor,
    labels: Tensor,
    n_samples: int = 10,
    generator: torch.Generator | None = None,
    *,
    has_background: bool = False,
    from_logits: bool = True,
    official: bool = False,
) -> Tensor:
    """ISL: mean BCE of the importance-sampled values against the image labels.

    b = sigmoid(scores) + 1e-5 (or scores + 1e-5 when ``from_logits=False``); per
    image and channel, ``n_samples`` positions are drawn ~ b / sum(b). ``official``
    (needs logits): the BCE is taken on the sampled *logits* (``multilabel_soft_margin_loss``,
    as the official code; it keeps a gradient at saturation); otherwise on the sampled b,
    clamped to [1e-7, 1 - 1e-7]. Returns a scalar.
    """
    targets = channel_targets(scores, labels, has_background)
    b = (torch.sigmoid(scores) if from_logits else scores) + SAMPLING_EPS
    if official:
        if not from_logits:
            raise ConfigError("the official ISL samples logits: it needs from_logits=True")
        n_img, n_ch = scores.shape[:2]
        weights = b.detach().float().reshape(n_img * n_ch, -1)
        device = generator.device if generator is not None else weights.device
        idx = torch.multinomial(weights.to(device), n_samples, replacement=True, generator=generator)
        sampled = scores.reshape(n_img * n_ch, -1).gather(1, idx.to(scores.device)).view(n_img, n_ch, n_samples)
        return F.binary_cross_entropy_with_logits(sampled, targets[:, :, None].expand_as(sampled))
    sampled = importance_sample(b, n_samples, generator)
    return _bce(sampled, targets[:, :, None].expand_as(sampled)).mean()


def importance_pooling(
    probs: Tensor, n_samples: int = 10, generator: torch.Generator | None = None
) -> Tensor:
    """Image scores (B, C) = mean of ``n_samples`` patch probabilities drawn ~ (probs + 1e-5).

    For the patch-classifier family (``probs`` = softmax Z, (B, K, h, w)); usable in
    place of max / top-k pooling. Gradient reaches the sampled patches (1/n each per draw).
    """
    if probs.dim() != 4:
        raise TagsegError(f"importance_pooling expects (B, C, h, w) probabilities, got {tuple(probs.shape)}")
    sampled = importance_sample(probs + SAMPLING_EPS, n_samples, generator)
    return (sampled - SAMPLING_EPS).mean(dim=2)


def gap_bce_loss(scores: Tensor, labels: Tensor, *, has_background: bool = False, from_logits: bool = True) -> Tensor:
    """BCE of the global average pooled maps against the labels, mean over batch and channels."""
    targets = channel_targets(scores, labels, has_background)
    pooled = scores.mean(dim=(2, 3))
    if from_logits:
        return F.binary_cross_entropy_with_logits(pooled, targets)
    return _bce(pooled, targets).mean()


def hfpl_classification_loss(
    scores: Tensor,
    labels: Tensor,
    cfg: HFPLConfig = HFPLConfig(),
    generator: torch.Generator | None = None,
    *,
    has_background: bool = False,
    from_logits: bool = True,
) -> Tensor:
    """L_cls = (1 - lam) * BCE(GAP(scores)) + lam * isl_weight * ISL (scalar)."""
    gap = gap_bce_loss(scores, labels, has_background=has_background, from_logits=from_logits)
    isl = importance_sampling_loss(
        _at_least(scores, cfg.min_map_size), labels, cfg.n_samples, generator, has_background=has_background,
        from_logits=from_logits, official=cfg.formulation == "official" and from_logits,
    )
    return (1.0 - cfg.lam) * gap + cfg.lam * cfg.isl_weight * isl


def _at_least(maps: Tensor, size: int | None) -> Tensor:
    """Maps (B, C, h, w) upsampled bilinearly so that their smaller side is at least ``size``
    (the HFPL paper's setting for small maps); unchanged when ``size`` is None or already met."""
    if size is None or min(maps.shape[2:]) >= size:
        return maps
    scale = size / min(maps.shape[2:])
    out = (max(size, round(maps.shape[2] * scale)), max(size, round(maps.shape[3] * scale)))
    return F.interpolate(maps, size=out, mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------- FSL


def fsl_normalised_maps(scores: Tensor, labels: Tensor, *, has_background: bool = False,
                        background: bool = True, official: bool = False) -> Tensor:
    """r = ReLU(scores) / spatial max (guarded by 1e-5), absent classes zeroed; (B, C, h, w).

    ``official``: min-max normalisation as the official code (``max_norm``):
    ReLU(ReLU(s) - min - 1e-5) / (max - min + 1e-5), per image and channel.
    With foreground-only maps (``has_background=False``) and ``background``, a background
    channel 1 − max_c r_c is put first, (B, C+1, h, w), as the HFPL paper's code does before FSL;
    ``background=False`` keeps the foreground channels only."""
    targets = channel_targets(scores, labels, has_background)
    r = F.relu(scores)
    if official:
        flat = r.flatten(2)
        mx = flat.max(dim=-1)[0][:, :, None, None]
        mn = flat.min(dim=-1)[0][:, :, None, None]
        r = F.relu(r - mn - 1e-5) / (mx - mn + 1e-5)
    else:
        r = r / r.flatten(2).amax(dim=2).clamp_min(1e-5)[:, :, None, None]
    r = r * (targets > 0)[:, :, None, None].to(r.dtype)
    if background and not has_background:
        r = torch.cat([1.0 - r.amax(dim=1, keepdim=True), r], dim=1)
    return r


def fsl_image_at_map(image: Tensor, size: tuple[int, int], *, official: bool = False) -> Tensor:
    """The image (B, 3, H, W) in [0, 1] resized to the map size, no gradient.

    Bilinear and antialiased; ``official``: bilinear with ``align_corners=True`` and no
    antialiasing, as the official code."""
    if image.dim() != 4 or image.shape[1] != 3:
        raise TagsegError(f"FSL expects images of shape (B, 3, H, W), got {tuple(image.shape)}")
    x = image.detach()
    if official:
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
    elif tuple(x.shape[2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0.0, 1.0)


def _colour_term(delta: Tensor, mu: float, eps: float = 1e-6, official: bool = False) -> Tensor:
    """f = tanh(mu + log(delta / (1 - delta))) with delta clamped to [eps, 1 - eps].

    ``official``: delta clamped to [0, 1] and log((delta + 1e-5) / (1 - delta + 1e-5)), as the
    official code."""
    if official:
        delta = delta.clamp(0.0, 1.0)
        return torch.tanh(mu + torch.log((delta + 1e-5) / (1 - delta + 1e-5)))
    delta = delta.clamp(eps, 1.0 - eps)
    return torch.tanh(mu + torch.log(delta) - torch.log1p(-delta))


def _grid_coords(h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype), indexing="ij"
    )
    return torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=1)  # (n, 2)


def _check_fsl_args(sigma: float, mu: float) -> None:
    if not sigma > 0:
        raise ConfigError(f"FSL sigma must be > 0, got {sigma}")
    if not math.isfinite(mu):
        raise ConfigError(f"FSL mu must be finite, got {mu}")


def feature_similarity_loss_dense(
    scores: Tensor,
    labels: Tensor,
    image: Tensor,
    sigma: float = 5.0,
    mu: float = 2.5,
    *,
    has_background: bool = False,
    background: bool = True,
    official: bool = False,
) -> Tensor:
    """Reference FSL that materialises all (h*w)^2 pairs; use only on small maps."""
    _check_fsl_args(sigma, mu)
    r = fsl_normalised_maps(scores, labels, has_background=has_background, background=background, official=official)
    b, c, h, w = r.shape
    n = h * w
    x = fsl_image_at_map(image, (h, w), official=official).to(r.dtype).flatten(2).transpose(1, 2)  # (B, n, 3)
    rf = r.flatten(2).transpose(1, 2)  # (B, n, C)
    p = _grid_coords(h, w, r.device, r.dtype)
    dist2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    wgt = torch.exp(-dist2 / (2 * sigma**2)) / (2 * math.pi * sigma**2)
    g = 0.5 * ((rf[:, :, None, :] - rf[:, None, :, :]) ** 2).sum(-1)
    delta = (x[:, :, None, :] - x[:, None, :, :]).abs().sum(-1) / 3.0
    f = _colour_term(delta, mu, official=official)
    return (-(wgt[None] * g * f).sum(dim=(1, 2)) / n).mean()


@torch.no_grad()
def _affinity_products(
    r: Tensor, x: Tensor, sigma: float, mu: float, block: int, radius: float | None, official: bool = False
) -> tuple[Tensor, Tensor]:
    """d = W 1 (B, n) and m = W r (B, n, C) for W_ij = w_ij f_ij, computed by blocks of map rows.

    ``radius`` (cells) restricts the columns to rows within reach and zeroes pairs
    farther apart; None keeps all pairs.
    """
    b, c, h, w = r.shape
    rf = r.flatten(2).transpose(1, 2)  # (B, n, C)
    xf = x.flatten(2).transpose(1, 2)  # (B, n, 3)
    coords = _grid_coords(h, w, r.device, r.dtype)
    d = torch.empty(b, h * w, dtype=r.dtype, device=r.device)
    m = torch.empty(b, h * w, c, dtype=r.dtype, device=r.device)
    rows = max(1, block // w)
    reach = h if radius is None else int(math.floor(radius))
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        i0, i1 = y0 * w, y1 * w
        j0, j1 = max(0, y0 - reach) * w, min(h, y1 + reach) * w
        dist2 = ((coords[i0:i1, None, :] - coords[None, j0:j1, :]) ** 2).sum(-1)
        wgt = torch.exp(-dist2 / (2 * sigma**2)) / (2 * math.pi * sigma**2)
        if radius is not None:
            wgt = wgt * (dist2 <= radius**2).to(wgt.dtype)
        delta = torch.cdist(xf[:, i0:i1], xf[:, j0:j1], p=1.0) / 3.0  # L1 colour distance / 3
        big_w = wgt[None] * _colour_term(delta, mu, official=official)  # (B, rows*w, cols)
        d[:, i0:i1] = big_w.sum(-1)
        m[:, i0:i1] = torch.bmm(big_w, rf[:, j0:j1])
    return d, m


def feature_similarity_loss(
    scores: Tensor,
    labels: Tensor,
    image: Tensor,
    sigma: float = 5.0,
    mu: float = 2.5,
    block: int = 1024,
    window: float | None = None,
    *,
    has_background: bool = False,
    background: bool = True,
    official: bool = False,
) -> Tensor:
    """FSL computed by blocks of about ``block`` map cells (exact when ``window`` is None).

    ``scores`` (B, C, h, w), ``labels`` (B, K), ``image`` (B, 3, H, W) in [0, 1].
    Peak memory is O(B * block * n) instead of O(B * n^2); with ``window`` (in units of
    sigma) only pairs within ``window * sigma`` cells are counted. Gradient only through g. ``official``: the official code's
    normalisation, resize and colour term (see :func:`fsl_normalised_maps`, :func:`fsl_image_at_map`).
    """
    _check_fsl_args(sigma, mu)
    if block <= 0:
        raise ConfigError(f"FSL block must be positive, got {block}")
    if window is not None and not window > 0:
        raise ConfigError(f"FSL window must be > 0 or None, got {window}")
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()  # the pair sums need at least single precision
    r = fsl_normalised_maps(scores, labels, has_background=has_background, background=background, official=official)
    b, c, h, w = r.shape
    x = fsl_image_at_map(image, (h, w), official=official).to(r.dtype)
    radius = None if window is None else window * sigma
    d, m = _affinity_products(r.detach(), x, sigma, mu, block, radius, official)
    rf = r.flatten(2).transpose(1, 2)  # (B, n, C), carries the gradient
    quad = (d * (rf * rf).sum(-1)).sum(-1)  # sum_i d_i |r_i|^2
    cross = (rf * m).sum(dim=(1, 2))  # sum_i r_i . (W r)_i ; d/dr of r^T W r is 2 W r
    cross = 2.0 * cross - cross.detach()
    return (-(quad - cross) / (h * w)).mean()


def hfpl_loss(
    scores: Tensor,
    labels: Tensor,
    image: Tensor,
    cfg: HFPLConfig = HFPLConfig(),
    generator: torch.Generator | None = None,
    *,
    has_background: bool = False,
    from_logits: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """L = L_cls + fsl_weight * L_fs; returns the scalar and detached parts ``cls``, ``fsl``, ``total``."""
    cls = hfpl_classification_loss(
        scores, labels, cfg, generator, has_background=has_background, from_logits=from_logits
    )
    fsl = feature_similarity_loss(
        _at_least(scores, cfg.min_map_size), labels, image, cfg.sigma, cfg.mu, cfg.block, cfg.window,
        has_background=has_background, background=cfg.fsl_background, official=cfg.formulation == "official"
    )
    total = cls + cfg.fsl_weight * fsl
    return total, {"cls": cls.detach(), "fsl": fsl.detach(), "total": total.detach()}


# ----------------------------------------------------------------------------- plug-in


def _loss_terms(ctx: LossContext, s: HFPLConfig) -> tuple[dict[str, Tensor], Tensor]:
    """ISL replaces the classification loss L (``ctx.base``) by (1−λ)·L + λ·ISL; FSL adds
    fsl_weight·L_fs. Raw CAM logits (CAM_LOGITS): ISL samples the K−1 CAMs themselves; class
    probabilities with background: ISL is a pooling of them under the family's class loss.
    On SEAM (arvijj/hfpl ``train_cam_voc.py`` lines 141-170) ``ctx.base`` is view 1's
    classification loss, which ISL replaces before SEAM averages it with view 2's, and FSL runs on
    view 1's raw CAM logits."""
    parts: dict[str, Tensor] = {}
    extra = ctx.base.new_zeros(())
    official = s.formulation == "official"
    maps = _at_least(ctx.maps, s.min_map_size)
    if s.isl:
        if ctx.offers(CAM_LOGITS):
            parts["isl"] = importance_sampling_loss(maps, ctx.labels, s.n_samples, official=official)
        else:
            parts["isl"] = ctx.class_loss(importance_pooling(maps, s.n_samples))
        # the base head's class loss is now (1−λ)·L + λ·ISL: add-ons after this one that scale the
        # base head's loss (RCA's aux_weight) scale all of it
        ctx.base = ctx.base + s.lam * (s.isl_weight * parts["isl"] - ctx.base)
    if s.fsl:
        parts["fsl"] = feature_similarity_loss(maps, ctx.labels, ctx.images, s.sigma, s.mu, s.block, s.window,
                                               background=s.fsl_background, official=official)
        extra = extra + s.fsl_weight * parts["fsl"]
    return parts, extra


ADDON = register_addon(Addon(
    name="hfpl", settings=HFPLConfig,
    requires={"isl": frozenset({SCORE_MAPS}), "fsl": frozenset({SCORE_MAPS, CAM_LOGITS})},
    loss_terms=_loss_terms, hints={"fsl": "FSL needs CAM score maps"}))
