"""The random walk of AffinityNet and IRN, with a sparse transition over the pairs within the
radius (no (h·w)² matrix).

Affinities A are 1 on the diagonal and a_ij for pairs closer than the radius, 0 elsewhere
(symmetric). The transition is T = A^β with each column divided by its sum, and the walk is
x · T^(2^t): the official code squares a dense T t times; here x is multiplied by the sparse T
2^t times, which is the same product in exact arithmetic and needs O(h·w·pairs) memory.

IRN (``misc/indexing.py``) scores a pair by 1 - max(boundary on its path), multiplies the seeds
by (1 - boundary) first, and uses radius 5, β = 10, t = 8; PSA (``infer_aff.py``) takes the
affinities from its head and uses radius 5, β = 8, t = 8.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from tagseg.errors import ConfigError
from tagseg.refine.pairs import offset_path, pairs_in_grid, search_offsets


def boundary_to_pair_affinity(boundary: torch.Tensor, radius: int = 5
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pair affinities from a class-boundary map (H, W) in [0, 1]: for every pair of
    :func:`~tagseg.refine.pairs.pairs_in_grid`, 1 - the largest boundary value on its path
    (ends included). Returns (src, dst, affinity): int64, int64, boundary's dtype, each (N,)."""
    if boundary.dim() != 2:
        raise ConfigError(f"boundary must be (H, W), got {tuple(boundary.shape)}")
    h, w = boundary.shape
    offsets = search_offsets(radius)
    affs = []
    for dy, dx in offsets:
        x0, x1 = max(0, -dx), w - max(0, dx)
        if h - dy <= 0 or x1 <= x0:
            continue
        strongest = None
        for py, px in offset_path(dy, dx):
            part = boundary[py:py + h - dy, x0 + px:x1 + px]
            strongest = part if strongest is None else torch.maximum(strongest, part)
        affs.append((1.0 - strongest).reshape(-1))
    src, dst, _ = pairs_in_grid(h, w, radius, offsets)
    aff = torch.cat(affs) if affs else boundary.new_zeros(0)
    return torch.from_numpy(src).to(boundary.device), torch.from_numpy(dst).to(boundary.device), aff


def sparse_transition(src: torch.Tensor, dst: torch.Tensor, aff: torch.Tensor, n: int,
                      beta: float) -> torch.Tensor:
    """The transposed transition Tᵀ (n, n) as a sparse CSR tensor: A = I + pairs both ways,
    raised to ``beta`` and normalised per column of A (so that Tᵀ's rows sum to 1)."""
    if aff.numel() and (aff.min() < 0 or aff.max() > 1):
        raise ConfigError("pair affinities must lie in [0, 1]")
    dev, dtype = aff.device, aff.dtype
    diag = torch.arange(n, device=dev)
    rows = torch.cat([src, dst, diag])
    cols = torch.cat([dst, src, diag])
    vals = torch.cat([aff, aff, torch.ones(n, device=dev, dtype=dtype)]).pow(beta)
    # column j of T (= row j of Tᵀ) is divided by Σ_i A[i, j]^β
    col_sum = torch.zeros(n, device=dev, dtype=dtype).index_add_(0, cols, vals)
    vals = vals / col_sum[cols]
    # Tᵀ[j, i] = T[i, j]: Tᵀ's row index is A's column index
    coo = torch.sparse_coo_tensor(torch.stack([cols, rows]), vals, (n, n), check_invariants=False).coalesce()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return coo.to_sparse_csr()


def random_walk(x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, aff: torch.Tensor,
                beta: float, exp_times: int) -> torch.Tensor:
    """Propagate scores x (C, H, W) with x · T^(2^exp_times); returns (C, H, W) in x's dtype.

    src, dst, aff: the pairs (N,) over the flattened H·W grid and their affinities in [0, 1]."""
    if x.dim() != 3:
        raise ConfigError(f"scores must be (C, H, W), got {tuple(x.shape)}")
    if isinstance(exp_times, bool) or not isinstance(exp_times, int) or not 0 <= exp_times <= 16:
        raise ConfigError(f"exp_times must be an integer in 0..16, got {exp_times!r}")
    c, h, w = x.shape
    trans_t = sparse_transition(src, dst, aff.to(x.dtype), h * w, beta)
    v = x.reshape(c, h * w).t().contiguous()      # (n, C): x·T = (Tᵀ·xᵀ)ᵀ
    for _ in range(2 ** exp_times):
        v = trans_t @ v
    return v.t().reshape(c, h, w)


def dense_random_walk(x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, aff: torch.Tensor,
                      beta: float, exp_times: int) -> torch.Tensor:
    """Reference with the dense (h·w)² transition squared ``exp_times`` times, as the official
    code does; for tests and the benchmark only (memory grows with (h·w)²)."""
    c, h, w = x.shape
    n = h * w
    a = torch.eye(n, dtype=x.dtype, device=x.device)
    a[src, dst] = aff.to(x.dtype)
    a[dst, src] = aff.to(x.dtype)
    t = a.pow(beta)
    t = t / t.sum(0, keepdim=True)
    for _ in range(exp_times):
        t = t @ t
    return (x.reshape(c, n) @ t).reshape(c, h, w)


def propagate_to_boundary(x: torch.Tensor, boundary: torch.Tensor, radius: int = 5, beta: float = 10,
                          exp_times: int = 8) -> torch.Tensor:
    """IRN's semantic propagation: seeds x (C, H, W) damped by (1 - boundary), walked with the
    affinities of the boundary map (H, W). Returns (C, H, W)."""
    if x.shape[-2:] != boundary.shape:
        raise ConfigError(f"seed grid {tuple(x.shape[-2:])} and boundary {tuple(boundary.shape)} differ")
    src, dst, aff = boundary_to_pair_affinity(boundary, radius)
    return random_walk(x * (1 - boundary), src, dst, aff, beta, exp_times)


def walk_labels(walked: torch.Tensor, keys: np.ndarray | torch.Tensor, bg_thres: float) -> torch.Tensor:
    """Labels (H, W) int64 from walked foreground scores (C, H, W): scores divided by their
    overall maximum, a constant background score ``bg_thres`` in front, argmax, mapped through
    [0] + keys (IRN ``make_sem_seg_labels.py``)."""
    keys_t = torch.as_tensor(np.asarray(keys), dtype=torch.long, device=walked.device).reshape(-1)
    scaled = walked / walked.max().clamp_min(1e-12)
    bg = torch.full_like(scaled[:1], bg_thres)
    pred = torch.cat([bg, scaled], 0).argmax(0)
    return torch.cat([keys_t.new_zeros(1), keys_t])[pred]
