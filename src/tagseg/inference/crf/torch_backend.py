"""Fully connected CRF mean-field inference in PyTorch (CPU or GPU).

Reproduces pydensecrf's ``DenseCRF2D`` with one Gaussian and one bilateral pairwise term,
Potts compatibilities and its default kernel normalisation (NORMALIZE_SYMMETRIC), as
determined by running both on small images until they agreed to float32 rounding:

- unary U = -log(max(p, clip)); Q_0 = softmax(-U) over classes;
- for each kernel with features f (pixel x/sxy, y/sxy and, for the bilateral kernel,
  r/srgb, g/srgb, b/srgb) a permutohedral lattice filter F that includes the pixel itself;
  n = 1 / sqrt(F(1) + 1e-20) per pixel (symmetric normalisation);
- Potts: the message for class l is +w * n * F(n * Q_l) (label agreement is rewarded,
  which equals the Potts penalty up to a per-pixel constant);
- Q_{t+1} = softmax(-U + sum over kernels of the messages); ``iterations`` times.

Speed-up that keeps the result: the filter is linear and sum_l Q_l = 1, so the message of
the last class is n * (F(n) - sum_{l<K} F(n * Q_l)) with F(n) computed once: K-1 filtered
channels per kernel instead of K. Classes with bit-identical unaries (typically all the
classes of probability 0) stay identical under Potts mean field and are computed once.
A kernel with compat 0 contributes nothing and is skipped.
The position-only lattice depends on (H, W, sxy) alone and is cached for the last few sizes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from tagseg.inference.crf.params import CRFParams
from tagseg.inference.crf.permutohedral import PermutohedralLattice

__all__ = ["clear_lattice_cache", "crf_torch", "pixel_features"]


def pixel_features(image: torch.Tensor, sxy: float, srgb: float | None) -> torch.Tensor:
    """Kernel features per pixel in raster order: float32 (H*W, 2) = (x/sxy, y/sxy), or
    (H*W, 5) with (r, g, b)/srgb appended when ``srgb`` is given. image: uint8 (H, W, 3)."""
    h, w = image.shape[:2]
    dev = image.device
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=dev),
        torch.arange(w, dtype=torch.float32, device=dev),
        indexing="ij",
    )
    cols = [xs.reshape(-1) / float(sxy), ys.reshape(-1) / float(sxy)]
    if srgb is not None:
        rgb = image.reshape(-1, 3).to(torch.float32) / float(srgb)
        cols += [rgb[:, 0], rgb[:, 1], rgb[:, 2]]
    return torch.stack(cols, 1)


class _Kernel:
    """One Potts pairwise term's filter: lattice, symmetric normalisation n (N,) and F(n) (N,)."""

    def __init__(self, features: torch.Tensor) -> None:
        self.lattice = PermutohedralLattice(features)
        ones = torch.ones(features.shape[0], 1, dtype=torch.float32, device=features.device)
        self.norm = (1.0 / torch.sqrt(self.lattice.filter(ones) + 1e-20))[:, 0]
        self.filtered_norm = self.lattice.filter(self.norm[:, None])[:, 0]

    def add_message(
        self, logits: torch.Tensor, q: torch.Tensor, weight: float, counts: torch.Tensor, last_from_rest: bool
    ) -> None:
        """logits += weight * n * F(n * Q), in place. q, logits: float32 (G, N) for G >= 1
        groups of identical classes; counts (G,) their sizes. With ``last_from_rest`` (the
        last group is one class) its message comes from the others, since sum_g counts_g q_g
        = 1: F(n q_G) = F(n) - sum_{g<G} counts_g F(n q_g)."""
        scale = weight * self.norm
        if not last_from_rest:
            logits.addcmul_(self.lattice.filter((q * self.norm).T).T, scale)
            return
        head = self.lattice.filter((q[:-1] * self.norm).T).T  # (G-1, N)
        logits[:-1].addcmul_(head, scale)
        logits[-1].addcmul_(self.filtered_norm - (head * counts[:-1, None]).sum(0), scale)


# The Gaussian (position-only) kernel depends only on (H, W, sxy): keep the last few.
_GAUSSIAN_CACHE: OrderedDict[tuple, _Kernel] = OrderedDict()
_GAUSSIAN_CACHE_SIZE = 4
_CACHE_LOCK = threading.Lock()


def clear_lattice_cache() -> None:
    """Forget the cached position-only lattices (e.g. to time a cold start)."""
    with _CACHE_LOCK:
        _GAUSSIAN_CACHE.clear()


def _gaussian_kernel(image: torch.Tensor, sxy: float) -> _Kernel:
    key = (image.shape[0], image.shape[1], float(sxy), str(image.device))
    with _CACHE_LOCK:
        kernel = _GAUSSIAN_CACHE.get(key)
        if kernel is not None:
            _GAUSSIAN_CACHE.move_to_end(key)
            return kernel
    kernel = _Kernel(pixel_features(image, sxy, None))
    with _CACHE_LOCK:
        _GAUSSIAN_CACHE[key] = kernel
        while len(_GAUSSIAN_CACHE) > _GAUSSIAN_CACHE_SIZE:
            _GAUSSIAN_CACHE.popitem(last=False)
    return kernel


def _softmax_over_classes(logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 0 of (G, N) where row g stands for counts[g] identical classes."""
    e = torch.exp(logits - logits.amax(0))
    return e / (e * counts[:, None]).sum(0)


def _group_identical_rows(unary: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """Representative row of each group of bit-identical rows of (K, N), and for each row
    its group index (K,). Cheap fingerprints first, exact comparison only on a match."""
    fingerprint = torch.stack([unary.double().sum(1), unary[:, :: max(1, unary.shape[1] // 64)].double().sum(1)], 1)
    reps: list[int] = []
    group_of = []
    for row in range(unary.shape[0]):
        for g, rep in enumerate(reps):
            if torch.equal(fingerprint[row], fingerprint[rep]) and torch.equal(unary[row], unary[rep]):
                group_of.append(g)
                break
        else:
            group_of.append(len(reps))
            reps.append(row)
    return reps, torch.tensor(group_of, device=unary.device)


@torch.no_grad()
def crf_torch(
    image: torch.Tensor,
    probs: torch.Tensor,
    params: CRFParams,
    prob_clip: float = 1e-5,
) -> torch.Tensor:
    """Mean-field dense CRF. image uint8 (H, W, 3); probs float32 (K, H, W), K >= 2, on the
    same device -> refined probabilities float32 (K, H, W) summing to 1 over K."""
    k, h, w = probs.shape
    unary = -torch.log(probs.reshape(k, h * w).to(torch.float32).clamp(min=prob_clip))
    # Classes with identical unaries (e.g. all classes of probability 0) keep identical Q in
    # every iteration (Potts), so each such group is computed once. A single-class group goes
    # last so that its message can come from the others.
    reps, group_of = _group_identical_rows(unary)
    counts = torch.bincount(group_of, minlength=len(reps)).to(torch.float32)
    singles = (counts == 1).nonzero().flatten().tolist()
    last_from_rest = bool(singles) and len(reps) > 1
    if last_from_rest and singles[-1] != len(reps) - 1:
        order = [g for g in range(len(reps)) if g != singles[-1]] + [singles[-1]]
        reps = [reps[g] for g in order]
        counts = counts[order]
        group_of = torch.argsort(torch.tensor(order, device=unary.device))[group_of]
    unary = unary[reps]
    q = _softmax_over_classes(-unary, counts)
    terms: list[tuple[_Kernel, float]] = []
    if params.iterations > 0 and params.gauss_compat != 0:
        terms.append((_gaussian_kernel(image, params.gauss_sxy), float(params.gauss_compat)))
    if params.iterations > 0 and params.bilateral_compat != 0:
        features = pixel_features(image, params.bilateral_sxy, params.bilateral_srgb)
        terms.append((_Kernel(features), float(params.bilateral_compat)))
    for _ in range(params.iterations):
        logits = -unary
        for kernel, weight in terms:
            kernel.add_message(logits, q, weight, counts, last_from_rest)
        q = _softmax_over_classes(logits, counts)
    return q[group_of].reshape(k, h, w)
