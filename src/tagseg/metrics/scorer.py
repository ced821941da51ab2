"""One scorer for every place that compares predicted masks with ground truth (METHODS.md §6).

A :class:`Scorer` accumulates a dataset-level confusion matrix (-> per-class IoU, mIoU, pixel
accuracy), the contour F-measure (-> J&F) and each image's own mIoU. Scorers of disjoint image
sets merge (``a.merge(b)``), so shards or worker processes can score separately.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from tagseg.data.records import DatasetIndex
from tagseg.errors import DataError
from tagseg.metrics.contour import ContourFAccumulator, j_and_f
from tagseg.metrics.miou import ConfusionMatrix, iou_from_matrix


def matrix_miou(matrix: np.ndarray) -> Optional[float]:
    """mIoU (fraction) of one (K, K+1) confusion matrix over the classes present in its ground truth
    or prediction; None when no pixel counts."""
    iou = iou_from_matrix(matrix)
    present = ~np.isnan(iou)
    return float(iou[present].mean()) if present.any() else None


def image_miou(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> Optional[float]:
    """Per-image mIoU (fraction) over classes present in ``gt`` or ``pred``; None when no pixel counts."""
    return matrix_miou(ConfusionMatrix(num_classes).update(pred, gt))


def require_masks(index: DatasetIndex) -> None:
    """DataError naming a few images when ``index`` has images without ground-truth masks."""
    if not index.has_masks:
        missing = [r.id for r in index.records if r.mask_path is None][:5]
        raise DataError(f"dataset {index.name} has images without ground-truth masks (e.g. {missing})")


class Scorer:
    """mIoU, pixel accuracy, contour F, J&F and per-image mIoU of predictions, image by image.

    num_classes: K (background 0 included); class_names: K names; contour: also compute the
    contour F-measure (the slow part); per_image: keep each image's mIoU.
    """

    def __init__(self, num_classes: int, class_names: Optional[Sequence[str]] = None, contour: bool = True,
                 per_image: bool = True) -> None:
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
        self.confusion = ConfusionMatrix(num_classes)
        self.contour = ContourFAccumulator(num_classes, class_names=self.class_names) if contour else None
        self.keep_per_image = per_image
        self.per_image: list[dict] = []

    def update(self, pred: np.ndarray, gt: np.ndarray, name: str = "") -> Optional[float]:
        """Add one image: pred, gt uint8 (H, W) (gt 255 ignored). Returns the image's mIoU (or None)."""
        m = self.confusion.update(pred, gt, name=name)
        if self.contour is not None:
            self.contour.update(pred, gt, name=name)
        miou = matrix_miou(m)
        if self.keep_per_image:
            self.per_image.append({"id": name, "miou": miou})
        return miou

    def merge(self, other: "Scorer") -> "Scorer":
        """Add the images ``other`` has seen (same classes and options); returns self."""
        if other.num_classes != self.num_classes or (other.contour is None) != (self.contour is None):
            raise ValueError("can only merge scorers with the same classes and options")
        self.confusion.matrix += other.confusion.matrix
        if self.contour is not None:
            for key in ("matched_pred", "total_pred", "matched_gt", "total_gt", "occurrences"):
                setattr(self.contour, key, getattr(self.contour, key) + getattr(other.contour, key))
            self.contour.num_images += other.contour.num_images
        self.per_image.extend(other.per_image)
        return self

    def summary(self) -> dict:
        """:func:`tagseg.metrics.miou.summarize`'s dict plus, with contour on, 'contour'
        (per-class P/R/F and conventions), 'contour_f' and 'j_and_f' (None when no foreground class
        occurred or the mIoU is undefined), and 'per_image' (mIoU, worst first, None last)."""
        summary = self.confusion.summary(self.class_names)
        if self.contour is not None:
            summary["contour"] = self.contour.result()
            summary["contour_f"] = summary["contour"]["mean_F"]
            defined = summary["contour_f"] is not None and summary["miou"] == summary["miou"]
            summary["j_and_f"] = j_and_f(summary["miou"], summary["contour_f"]) if defined else None
        if self.keep_per_image:
            summary["per_image"] = sorted(self.per_image, key=lambda r: (r["miou"] is None, r["miou"] or 0.0))
        return summary

    def brief(self) -> dict:
        """The headline numbers only: miou, pixel_accuracy, iou, and contour_f / j_and_f when on."""
        s = self.summary()
        keys = ("miou", "pixel_accuracy", "iou", "miou_classes", "contour_f", "j_and_f")
        return {k: s[k] for k in keys if k in s}
