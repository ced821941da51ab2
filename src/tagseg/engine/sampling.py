"""Class-aware sampling of training images: repeat-factor weights and the epoch sampler that draws by them.

Repeat-factor sampling (Gupta et al., "LVIS", CVPR 2019, §4.1): with f(c) the fraction of training
images that contain class c and t a threshold, class c's repeat factor is r(c) = max(1, sqrt(t / f(c)))
and an image's is the largest over the classes it contains, r_i = max_{c in i} r(c). Classes in at
least a fraction t of the images are not oversampled; rarer ones are, by the square root of their
rarity. The presence of a class comes from the image-level tags, the supervision a weakly
supervised pipeline has, never from ground-truth masks.

:class:`EpochWeightedSampler` draws a fixed number of indices per epoch, with replacement and
probability proportional to the weights, so an epoch keeps its length (and a run its number of
optimisation steps) whatever the weights.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def repeat_factors(labels: np.ndarray, threshold: float) -> np.ndarray:
    """Per-image repeat factors r_i (N,) float64 >= 1 from multi-hot tags ``labels`` (N, K).

    threshold: t in (0, 1]; a class present in a fraction f(c) >= t of the images gets r(c) = 1.
    A class present in no image is ignored; an image with no class gets 1.
    """
    labels = np.asarray(labels) > 0.5
    if labels.ndim != 2 or not len(labels):
        raise ValueError(f"labels must be (N, K) with N >= 1, got shape {labels.shape}")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    freq = labels.mean(axis=0)
    per_class = np.where(freq > 0, np.maximum(1.0, np.sqrt(threshold / np.maximum(freq, 1e-12))), 1.0)
    return np.where(labels, per_class[None, :], 1.0).max(axis=1)


class EpochWeightedSampler(Sampler[int]):
    """``num_samples`` indices per epoch drawn with replacement, P(i) proportional to ``weights[i]``.

    The draw is a function of (seed, epoch) only (``set_epoch``); under data parallelism every
    process makes the same draw and takes its slice ``rank::world_size`` (the draw is padded by
    wrapping around to a multiple of ``world_size``), so the processes' indices partition it.
    """

    def __init__(self, weights: Sequence[float], seed: int, num_samples: int | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if w.ndim != 1 or not len(w) or bool((w < 0).any()) or not bool(torch.isfinite(w).all()) or float(w.sum()) <= 0:
            raise ValueError("weights must be a non-empty 1-D sequence of finite values >= 0 with a positive sum")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.weights, self.seed, self.rank, self.world_size = w, seed, rank, world_size
        self.num_samples = len(w) if num_samples is None else int(num_samples)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _draw(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        drawn = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g).tolist()
        total = math.ceil(self.num_samples / self.world_size) * self.world_size
        return [drawn[i % len(drawn)] for i in range(total)]

    def __iter__(self) -> Iterator[int]:
        return iter(self._draw()[self.rank::self.world_size])

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.world_size)
