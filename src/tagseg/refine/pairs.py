"""Pixel pairs within a radius, and the pixel paths between them (IRN's path index).

A pair joins a source pixel (y, x) to a destination (y + dy, x + dx) with an offset from
:func:`search_offsets`: only "forward" offsets (dy > 0, or dy == 0 and dx > 0), so every
unordered pair of distinct pixels closer than ``radius`` appears once. IRN scores a pair by the
strongest class boundary on the straight pixel path between its ends (:func:`offset_path`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tagseg.errors import ConfigError


def _check_radius(radius: int) -> None:
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 2:
        raise ConfigError(f"radius must be an integer >= 2, got {radius!r}")


def search_offsets(radius: int) -> list[tuple[int, int]]:
    """Forward offsets (dy, dx) with dy² + dx² < radius², in the order of the official code
    (PSA ``get_indices_in_radius``, IRN ``get_search_paths_dst``): the row dy = 0 first, then
    rows dy = 1 .. radius-1 left to right. radius 5 gives 34 offsets."""
    _check_radius(radius)
    offsets = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-radius + 1, radius):
            if dx * dx + dy * dy < radius * radius:
                offsets.append((dy, dx))
    return offsets


def offset_path(dy: int, dx: int) -> np.ndarray:
    """The pixels (int64 (L, 2), rows (y, x) relative to the source) within distance 1 of the
    straight line from (0, 0) to (dy, dx), inside the box they span; sorted by decreasing
    |y| + |x| (ties in row-major order), so row 0 is the destination and the last row the
    source."""
    length_sq = dy * dy + dx * dx
    if length_sq == 0:
        raise ConfigError("offset_path needs a non-zero offset")
    coords = []
    for y in range(min(0, dy), max(0, dy) + 1):
        for x in range(min(0, dx), max(0, dx) + 1):
            # squared distance of (y, x) from the line through 0 and (dy, dx)
            if (dy * x - dx * y) ** 2 < length_sq:
                coords.append((y, x))
    coords.sort(key=lambda c: -(abs(c[0]) + abs(c[1])))
    return np.asarray(coords, dtype=np.int64)


@dataclass(frozen=True)
class PathIndex:
    """Pairs and paths on an (height, width) grid, laid out as in IRN's training.

    Sources are the pixels of the crop ``[0, height - r + 1) × [r - 1, width - r + 1)`` (r =
    radius), so that every destination stays inside the grid. Offsets are grouped by path length
    (shortest first), keeping :func:`search_offsets` order inside a group.

    offsets: int64 (P, 2), the (dy, dx) of each pair direction in group order.
    paths: per group, int64 (P_g, L_g, 2) relative path pixels (row 0 = destination).
    path_indices: per group, int64 (P_g, L_g, S) flat grid indices of those path pixels for
      every source.
    src: int64 (S,) flat indices of the sources; dst: int64 (P, S) of the destinations.
    """

    radius: int
    height: int
    width: int
    offsets: np.ndarray
    paths: list[np.ndarray]
    path_indices: list[np.ndarray]
    src: np.ndarray
    dst: np.ndarray


def build_path_index(radius: int, height: int, width: int) -> PathIndex:
    """The :class:`PathIndex` of an (height, width) grid; ConfigError when the grid is smaller
    than the crop the radius needs (height >= radius, width >= 2 * radius - 1)."""
    _check_radius(radius)
    margin = radius - 1
    crop_h, crop_w = height - margin, width - 2 * margin
    if crop_h < 1 or crop_w < 1:
        raise ConfigError(f"a {height}x{width} grid is too small for radius {radius}: "
                          f"it needs at least {radius}x{2 * radius - 1}")
    groups: dict[int, list[np.ndarray]] = {}
    for dy, dx in search_offsets(radius):
        path = offset_path(dy, dx)
        groups.setdefault(len(path), []).append(path)
    grid = np.arange(height * width, dtype=np.int64).reshape(height, width)
    paths, path_indices = [], []
    for length in sorted(groups):
        group = np.stack(groups[length])                       # (P_g, L, 2)
        paths.append(group)
        idx = np.empty((group.shape[0], length, crop_h * crop_w), dtype=np.int64)
        for p, path in enumerate(group):
            for k, (y, x) in enumerate(path):
                idx[p, k] = grid[y:y + crop_h, margin + x:margin + x + crop_w].reshape(-1)
        path_indices.append(idx)
    src = grid[:crop_h, margin:margin + crop_w].reshape(-1)
    dst = np.concatenate([idx[:, 0] for idx in path_indices], axis=0)
    offsets = np.concatenate([group[:, 0] for group in paths], axis=0)
    return PathIndex(radius, height, width, offsets, paths, path_indices, src, dst)


def pairs_in_grid(height: int, width: int, radius: int,
                  offsets: list[tuple[int, int]] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of distinct pixels of an (height, width) grid closer than ``radius``, once.

    Returns (src, dst, offset_id), int64 (N,) each: flat indices and the position of the pair's
    offset in ``offsets`` (default :func:`search_offsets`). Unlike :class:`PathIndex` the sources
    cover the whole grid; pairs whose destination would leave it are omitted."""
    offsets = search_offsets(radius) if offsets is None else offsets
    grid = np.arange(height * width, dtype=np.int64).reshape(height, width)
    src, dst, oid = [], [], []
    for k, (dy, dx) in enumerate(offsets):
        x0, x1 = max(0, -dx), width - max(0, dx)
        if height - dy <= 0 or x1 <= x0:
            continue
        s = grid[:height - dy, x0:x1].reshape(-1)
        src.append(s)
        dst.append(s + dy * width + dx)
        oid.append(np.full_like(s, k))
    if not src:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return np.concatenate(src), np.concatenate(dst), np.concatenate(oid)


def crop_pairs(height: int, width: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """AffinityNet's layout of pairs (PSA ``ExtractAffinityLabelInRadius``): the sources of
    :class:`PathIndex` (S,) and their destinations (P, S) in :func:`search_offsets` order."""
    _check_radius(radius)
    margin = radius - 1
    crop_h, crop_w = height - margin, width - 2 * margin
    if crop_h < 1 or crop_w < 1:
        raise ConfigError(f"a {height}x{width} grid is too small for radius {radius}")
    grid = np.arange(height * width, dtype=np.int64).reshape(height, width)
    src = grid[:crop_h, margin:margin + crop_w].reshape(-1)
    dst = np.stack([grid[dy:dy + crop_h, margin + dx:margin + dx + crop_w].reshape(-1)
                    for dy, dx in search_offsets(radius)])
    return src, dst
