"""Contour F (DAVIS-style boundary F-measure) accumulated over a dataset, and J&F.

Conventions
-----------
* **Boundary** (``boundary=``), the same rule for prediction and ground truth, per class on
  the binary map ``labels == c``:

  - ``"seg2bmap"`` (default, the DAVIS toolkit's ``seg2bmap``): a pixel is a boundary pixel
    iff its value differs from its right, bottom or bottom-right neighbour; in the last row
    only the right neighbour counts, in the last column only the bottom one, and the
    bottom-right pixel is never a boundary pixel. Pixels outside the image do not count, so
    touching the image edge makes no boundary. The map is taken at the label map's own size
    (the toolkit's default width/height). It marks both sides of a transition where the
    region lies right of / below it (outer pixels on the left and top, inner pixels on the
    right and bottom).
  - ``"inner4"``: a pixel of the region is a boundary pixel iff at least one of its
    4-neighbours inside the image lies outside the region (inner boundary only).
* **Ground truth 255** (ignore) is treated as background before boundaries are taken.
* **Tolerance.** ``r = ceil(ratio * sqrt(H**2 + W**2))`` pixels, ``ratio = 0.008``. A
  boundary pixel *matches* iff some pixel of the other boundary lies within Euclidean
  distance ``<= r`` of it, i.e. iff it lies in the other boundary dilated by the disk
  ``{(dy, dx): dy**2 + dx**2 <= r**2}``.
* **Accumulation.** For every foreground class present in the prediction or the ground
  truth of an image, four pixel counts are added to dataset totals: matched / total
  prediction boundary pixels and matched / total ground-truth boundary pixels.
  ``P = matched_pred / total_pred`` and ``R = matched_gt / total_gt``; a ratio whose
  denominator is zero over the whole dataset is 1 (no boundary pixels, so nothing was
  missed or spurious). On a single image this reproduces the per-image DAVIS edge cases:
  neither has a boundary -> P = R = 1; only the ground truth has one -> P = 1, R = 0;
  only the prediction has one -> P = 0, R = 1. Over a dataset an image in which neither
  has a boundary adds zero pixels and so leaves P and R unchanged.
  ``F = 2PR / (P + R)`` (0 when P + R = 0).
* **Mean F** is taken over foreground classes (1..K-1) that occur, in the prediction or
  the ground truth, in at least one image; classes that never occur get ``None``.

Three implementations of the matching rule give identical counts: a disk dilation
(:func:`matched_pixels_dilation`, the plain reference), a Euclidean distance transform
(:func:`matched_pixels`) and a nearest-neighbour query on boundary coordinates
(:func:`count_matched_points`), which the accumulator uses because its cost grows with the
number of boundary pixels rather than the image area.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from tagseg.data.classes import IGNORE_INDEX
from tagseg.errors import ConfigError, DataError

BOUNDARY_MODES = ("seg2bmap", "inner4")
DEFAULT_BOUNDARY = "seg2bmap"
_BOUNDARY_TEXT = {
    "seg2bmap": "boundary = DAVIS seg2bmap (differs from the right, bottom or bottom-right neighbour)",
    "inner4": "boundary = inner 4-neighbourhood",
}
MEAN_CONVENTION = (
    "mean F over foreground classes (1..K-1) present in the prediction or the ground truth "
    "of at least one image; per class P = matched/total prediction boundary pixels and "
    "R = matched/total ground-truth boundary pixels summed over the dataset, a ratio with "
    "zero total is 1; ground truth 255 counts as background; boundary = 4-neighbourhood, "
    "image edge is not a boundary"
)


def convention(boundary: str = DEFAULT_BOUNDARY) -> str:
    """The text stored with a result: how the mean was taken and which boundary rule was used."""
    return MEAN_CONVENTION.replace("boundary = 4-neighbourhood", _BOUNDARY_TEXT[boundary])


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """The DAVIS toolkit's boundary map of a binary mask at its own size (see the module docstring).

    Args:
        seg: (H, W) mask; nonzero = region.
    Returns:
        bool (H, W).
    """
    seg = np.asarray(seg) != 0
    if seg.ndim != 2:
        raise DataError(f"seg2bmap expects a 2-D mask, got shape {seg.shape}")
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    b[-1, :] = seg[-1, :] ^ east[-1, :]
    b[:, -1] = seg[:, -1] ^ south[:, -1]
    b[-1, -1] = False
    return b


def boundary_map(binary: np.ndarray) -> np.ndarray:
    """Inner 4-neighbourhood boundary of a binary region.

    Args:
        binary: bool (H, W) region mask.
    Returns:
        bool (H, W): region pixels with at least one in-image 4-neighbour outside the
        region (the image edge itself never makes a pixel a boundary pixel).
    """
    region = np.asarray(binary, dtype=bool)
    if region.ndim != 2:
        raise DataError(f"boundary_map expects a 2-D mask, got shape {region.shape}")
    return region & label_edges(region.view(np.uint8))


def label_edges(labels: np.ndarray) -> np.ndarray:
    """Pixels with an in-image 4-neighbour of a different value.

    For any class ``c``, ``(labels == c) & label_edges(labels)`` equals
    ``boundary_map(labels == c)``, so one pass serves every class of a label map.

    Args:
        labels: integer (H, W) label map.
    Returns:
        bool (H, W).
    """
    edges = np.zeros(labels.shape, dtype=bool)
    vertical = labels[1:, :] != labels[:-1, :]
    edges[1:, :] |= vertical
    edges[:-1, :] |= vertical
    horizontal = labels[:, 1:] != labels[:, :-1]
    edges[:, 1:] |= horizontal
    edges[:, :-1] |= horizontal
    return edges


def tolerance_radius(height: int, width: int, ratio: float = 0.008) -> int:
    """Boundary tolerance in pixels: ``ceil(ratio * sqrt(height**2 + width**2))``."""
    if height <= 0 or width <= 0:
        raise DataError(f"image size must be positive, got height={height}, width={width}")
    if not ratio > 0:
        raise ConfigError(f"contour tolerance ratio must be > 0, got {ratio}")
    return int(math.ceil(ratio * math.hypot(height, width)))


def disk(radius: int) -> np.ndarray:
    """bool (2r+1, 2r+1) disk structuring element: offsets with dy**2 + dx**2 <= r**2."""
    if radius < 0:
        raise ConfigError(f"disk radius must be >= 0, got {radius}")
    offsets = np.arange(-radius, radius + 1)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2


def matched_pixels(boundary: np.ndarray, other: np.ndarray, radius: int) -> np.ndarray:
    """Pixels of ``boundary`` within Euclidean distance ``radius`` of a pixel of ``other``.

    Uses a Euclidean distance transform restricted to the bounding box of both boundaries
    (exact: every pixel of either boundary lies inside it).

    Args:
        boundary, other: bool (H, W) boundary maps.
        radius: tolerance in pixels (>= 0).
    Returns:
        bool (H, W), a subset of ``boundary``.
    """
    boundary, other = _check_pair(boundary, other)
    matched = np.zeros(boundary.shape, dtype=bool)
    if not boundary.any() or not other.any():
        return matched
    rows = np.flatnonzero((boundary | other).any(axis=1))
    cols = np.flatnonzero((boundary | other).any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    distance = ndimage.distance_transform_edt(~other[box])
    matched[box] = boundary[box] & (distance <= radius)
    return matched


def matched_pixels_dilation(boundary: np.ndarray, other: np.ndarray, radius: int) -> np.ndarray:
    """Same result as :func:`matched_pixels`, by dilating ``other`` with :func:`disk`.

    Slower; kept as a plain reference for the distance-transform path.
    """
    boundary, other = _check_pair(boundary, other)
    if not other.any():
        return np.zeros(boundary.shape, dtype=bool)
    return boundary & ndimage.binary_dilation(other, structure=disk(radius))


def count_matched_points(points: np.ndarray, other: np.ndarray, radius: int) -> int:
    """How many of ``points`` lie within Euclidean distance ``radius`` of some ``other`` point.

    The sparse form of :func:`matched_pixels` used by :class:`ContourFAccumulator`: its cost
    grows with the number of boundary pixels, not with the image area.

    Args:
        points: int (N, 2) pixel coordinates (row, col).
        other: int (M, 2) pixel coordinates.
        radius: tolerance in pixels (>= 0).
    Returns:
        int in 0..N.
    """
    if radius < 0:
        raise ConfigError(f"matching radius must be >= 0, got {radius}")
    if len(points) == 0 or len(other) == 0:
        return 0
    distance, _ = cKDTree(other).query(points, k=1, distance_upper_bound=radius + 0.5)
    found = np.isfinite(distance)
    # coordinates are integers, so squared distances are integers: compare them exactly
    return int(np.count_nonzero(np.rint(distance[found] ** 2) <= radius * radius))


def _seg2bmap_points_by_class(labels: np.ndarray, num_classes: int, classes: np.ndarray) -> list[np.ndarray]:
    """:func:`seg2bmap` boundary coordinates (N_c, 2) of each class in ``classes`` (others empty)."""
    empty = np.zeros((0, 2), dtype=np.int64)
    points = [empty] * num_classes
    for c in classes:
        points[c] = np.argwhere(seg2bmap(labels == c))
    return points


def _boundary_points_by_class(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """Boundary pixel coordinates of every class of a label map.

    Args:
        labels: int (H, W) label map with values in 0..num_classes-1.
    Returns:
        ``num_classes`` arrays of shape (N_c, 2) (row, col); entry c holds the pixels of
        ``boundary_map(labels == c)``.
    """
    rows, cols = np.nonzero(label_edges(labels))
    owner = labels[rows, cols]
    order = np.argsort(owner, kind="stable")
    points = np.stack([rows[order], cols[order]], axis=1)
    splits = np.cumsum(np.bincount(owner, minlength=num_classes))[:-1]
    return np.split(points, splits)


def _check_pair(boundary: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    boundary = np.asarray(boundary, dtype=bool)
    other = np.asarray(other, dtype=bool)
    if boundary.shape != other.shape or boundary.ndim != 2:
        raise DataError(
            f"boundary maps must be 2-D and of one shape, got {boundary.shape} and {other.shape}"
        )
    return boundary, other


class ContourFAccumulator:
    """Dataset-level contour precision / recall / F per foreground class.

    Per class ``c`` in 1..K-1 it sums, over every image where ``c`` is present in the
    prediction or the ground truth: matched prediction boundary pixels, prediction
    boundary pixels, matched ground-truth boundary pixels, ground-truth boundary pixels.
    See the module docstring for the conventions.

    Args:
        num_classes: K, including background 0.
        ratio: tolerance as a fraction of the image diagonal.
        radius: fixed tolerance in pixels for every image (overrides ``ratio``).
        class_names: K names for the result; indices as strings when omitted.
        boundary: ``"seg2bmap"`` (default, DAVIS) or ``"inner4"`` (the earlier rule); see the
            module docstring.
    """

    def __init__(
        self,
        num_classes: int = 21,
        ratio: float = 0.008,
        radius: int | None = None,
        class_names: Sequence[str] | None = None,
        boundary: str = DEFAULT_BOUNDARY,
    ) -> None:
        if boundary not in BOUNDARY_MODES:
            raise ConfigError(f"contour boundary mode {boundary!r}: choose one of {BOUNDARY_MODES}")
        self.boundary = boundary
        if num_classes < 2 or num_classes > IGNORE_INDEX:
            raise ConfigError(f"num_classes must be in 2..{IGNORE_INDEX}, got {num_classes}")
        if not ratio > 0:
            raise ConfigError(f"contour tolerance ratio must be > 0, got {ratio}")
        if radius is not None and radius < 0:
            raise ConfigError(f"contour tolerance radius must be >= 0, got {radius}")
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(
                f"class_names has {len(class_names)} entries, num_classes is {num_classes}"
            )
        self.num_classes = num_classes
        self.ratio = ratio
        self.radius = radius
        self.class_names = (
            list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
        )
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        k = self.num_classes
        self.matched_pred = np.zeros(k, dtype=np.int64)
        self.total_pred = np.zeros(k, dtype=np.int64)
        self.matched_gt = np.zeros(k, dtype=np.int64)
        self.total_gt = np.zeros(k, dtype=np.int64)
        self.occurrences = np.zeros(k, dtype=np.int64)
        self.num_images = 0

    def update(self, pred: np.ndarray, gt: np.ndarray, name: str | None = None) -> None:
        """Add one image.

        Args:
            pred: integer (H, W) predicted labels in 0..K-1, or 255 ("no decision", treated as
                background like ground-truth 255; mIoU counts it as an error).
            gt: integer (H, W) ground-truth labels in 0..K-1 or 255 (treated as background).
            name: image id used in error messages.
        """
        pred, gt = self._validate(pred, gt, name)
        present = (
            np.bincount(pred.ravel(), minlength=self.num_classes)
            + np.bincount(gt.ravel(), minlength=self.num_classes)
        )[: self.num_classes] > 0
        present[0] = False
        self.num_images += 1
        classes = np.flatnonzero(present)
        if classes.size == 0:
            return
        height, width = pred.shape
        radius = self.radius if self.radius is not None else tolerance_radius(height, width, self.ratio)
        if self.boundary == "seg2bmap":
            pred_points = _seg2bmap_points_by_class(pred, self.num_classes, classes)
            gt_points = _seg2bmap_points_by_class(gt, self.num_classes, classes)
        else:
            pred_points = _boundary_points_by_class(pred, self.num_classes)
            gt_points = _boundary_points_by_class(gt, self.num_classes)
        for c in classes:
            pred_c, gt_c = pred_points[c], gt_points[c]
            self.occurrences[c] += 1
            self.total_pred[c] += len(pred_c)
            self.total_gt[c] += len(gt_c)
            self.matched_pred[c] += count_matched_points(pred_c, gt_c, radius)
            self.matched_gt[c] += count_matched_points(gt_c, pred_c, radius)

    def _validate(
        self, pred: np.ndarray, gt: np.ndarray, name: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        where = f" (image {name})" if name is not None else ""
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        for label, arr in (("prediction", pred), ("ground truth", gt)):
            if arr.ndim != 2:
                raise DataError(f"{label}{where} must be a 2-D label map, got shape {arr.shape}")
            if not np.issubdtype(arr.dtype, np.integer):
                raise DataError(f"{label}{where} must hold integer labels, got dtype {arr.dtype}")
        if pred.shape != gt.shape:
            raise DataError(f"prediction shape {pred.shape} != ground truth shape {gt.shape}{where}")
        pred = pred.astype(np.int64)
        pred = np.where(pred == IGNORE_INDEX, 0, pred)  # "no decision" draws no class boundary
        if pred.size:
            bad_pred = (pred < 0) | (pred >= self.num_classes)
            if bad_pred.any():
                raise DataError(
                    f"prediction{where} has label {int(pred[bad_pred][0])} outside "
                    f"0..{self.num_classes - 1}"
                )
        gt = gt.astype(np.int64)
        if gt.size:
            bad = (gt < 0) | ((gt >= self.num_classes) & (gt != IGNORE_INDEX))
            if bad.any():
                raise DataError(
                    f"ground truth{where} has label {int(gt[bad][0])} outside "
                    f"0..{self.num_classes - 1} and {IGNORE_INDEX}"
                )
        gt = np.where(gt == IGNORE_INDEX, 0, gt)
        return pred.astype(np.int64), gt

    def result(self) -> dict[str, Any]:
        """Per-class and mean contour scores.

        Returns:
            dict with ``per_class`` (name -> {"P", "R", "F", matched/total counts,
            "images"}; P, R, F are None for classes that never occur), ``mean_F`` (None when
            no foreground class occurred), ``num_classes_in_mean``, ``num_images``,
            ``radius`` (fixed radius or None), ``ratio``, ``boundary`` and ``convention``.
        """
        per_class: dict[str, dict[str, Any]] = {}
        scores = []
        for c in range(1, self.num_classes):
            entry: dict[str, Any] = {
                "matched_pred": int(self.matched_pred[c]),
                "total_pred": int(self.total_pred[c]),
                "matched_gt": int(self.matched_gt[c]),
                "total_gt": int(self.total_gt[c]),
                "images": int(self.occurrences[c]),
            }
            if self.occurrences[c] == 0:
                entry.update(P=None, R=None, F=None)
            else:
                p = _ratio_or_one(self.matched_pred[c], self.total_pred[c])
                r = _ratio_or_one(self.matched_gt[c], self.total_gt[c])
                f = 2 * p * r / (p + r) if p + r > 0 else 0.0
                entry.update(P=p, R=r, F=f)
                scores.append(f)
            per_class[self.class_names[c]] = entry
        return {
            "per_class": per_class,
            "mean_F": float(np.mean(scores)) if scores else None,
            "num_classes_in_mean": len(scores),
            "num_images": self.num_images,
            "radius": self.radius,
            "ratio": self.ratio,
            "boundary": self.boundary,
            "convention": convention(self.boundary),
        }


def _ratio_or_one(numerator: np.integer, denominator: np.integer) -> float:
    return float(numerator) / float(denominator) if denominator > 0 else 1.0


def j_and_f(miou: float, contour_f: float) -> float:
    """J&F = (mIoU + contour F) / 2; both inputs as fractions in [0, 1]."""
    for label, value in (("mIoU", miou), ("contour F", contour_f)):
        if not (0.0 <= value <= 1.0):
            raise DataError(f"{label} must be a fraction in [0, 1], got {value}")
    return (miou + contour_f) / 2.0
