"""mIoU and pixel accuracy from a dataset-level confusion matrix (METHODS.md §6).

Pixels whose ground truth is 255 are excluded. A predicted 255 ("no decision") counts as a
wrong prediction for the pixel's true class. IoU_c = C_cc / (row_c + col_c − C_cc); the
reported mIoU averages over classes present in the ground truth or the prediction.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tagseg.errors import DataError

MIOU_CONVENTION = "mean IoU over classes present in the ground truth or the prediction of the scored images"


class ConfusionMatrix:
    """Accumulates a (K, K+1) matrix: rows = ground truth, columns = prediction (+ column K for 255)."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.k = num_classes
        self.ignore = ignore_index
        self.matrix = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray, name: str = "") -> np.ndarray:
        """Add one image (uint8 (H, W) each); returns that image's own (K, K+1) matrix."""
        if pred.shape != gt.shape:
            raise DataError(f"prediction {name} has shape {pred.shape}, ground truth {gt.shape}")
        valid = gt != self.ignore
        p = pred[valid].astype(np.int64)
        g = gt[valid].astype(np.int64)
        if g.size and g.max() >= self.k:
            raise DataError(f"ground truth {name} has class {int(g.max())} >= {self.k} classes")
        bad = (p >= self.k) & (p != self.ignore)
        if bad.any():
            raise DataError(f"prediction {name} has values {np.unique(p[bad]).tolist()} outside the {self.k} classes")
        p = np.where(p == self.ignore, self.k, p)
        m = np.bincount(g * (self.k + 1) + p, minlength=self.k * (self.k + 1)).reshape(self.k, self.k + 1)
        self.matrix += m
        return m

    def iou(self) -> np.ndarray:
        """Per-class IoU (K,), NaN for classes absent from both ground truth and prediction."""
        return iou_from_matrix(self.matrix)

    def summary(self, class_names: Sequence[str]) -> dict:
        return summarize(self.matrix, class_names)


def iou_from_matrix(matrix: np.ndarray) -> np.ndarray:
    k = matrix.shape[0]
    tp = np.diag(matrix[:, :k]).astype(np.float64)
    rows = matrix.sum(axis=1)
    cols = matrix[:, :k].sum(axis=0)
    union = rows + cols - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def summarize(matrix: np.ndarray, class_names: Sequence[str]) -> dict:
    """JSON-ready metrics: per-class IoU, mIoU (with its convention), pixel accuracy, confusion."""
    k = matrix.shape[0]
    iou = iou_from_matrix(matrix)
    present = ~np.isnan(iou)
    total = int(matrix.sum())
    return {
        "num_classes": k,
        "class_names": list(class_names),
        "iou": [None if np.isnan(v) else float(v) for v in iou],
        "miou": float(np.nanmean(iou)) if present.any() else float("nan"),
        "miou_classes": [class_names[i] for i in np.flatnonzero(present)],
        "miou_convention": MIOU_CONVENTION,
        "pixel_accuracy": float(np.trace(matrix[:, :k]) / total) if total else float("nan"),
        "pixels": total,
        "confusion": matrix.tolist(),
        "confusion_axes": "rows = ground truth class, columns = predicted class (last column: predicted 255)",
    }


def check_known_classes(names: Sequence[str], class_names: Sequence[str]) -> None:
    """ValueError naming the ``names`` that are not in ``class_names`` (and listing those)."""
    unknown = [n for n in names if n not in class_names]
    if unknown:
        raise ValueError(f"unknown classes {unknown}; the classes are {list(class_names)}")


def subset_miou(summary: dict, names: Sequence[str]) -> dict:
    """mIoU over the named classes of a :func:`summarize` result: ``{"classes": names, "miou":
    mean IoU of those present (NaN when none is), "present": [...]}``. Names must be classes of the
    summary (ValueError otherwise), so a typo cannot silently shrink the average."""
    check_known_classes(names, summary["class_names"])
    by_name = dict(zip(summary["class_names"], summary["iou"]))
    present = [n for n in names if by_name[n] is not None]
    miou = float(np.mean([by_name[n] for n in present])) if present else float("nan")
    return {"classes": list(names), "miou": miou, "present": present}


def format_table(summary: dict, title: str = "") -> str:
    """A plain-text per-class IoU table."""
    lines = [title] if title else []
    lines.append(f"{'class':<16}{'IoU':>8}")
    for name, v in zip(summary["class_names"], summary["iou"]):
        lines.append(f"{name:<16}{'-' if v is None else f'{100 * v:.1f}':>8}")
    lines.append(f"{'mIoU':<16}{100 * summary['miou']:>8.1f}   ({len(summary['miou_classes'])} classes; "
                 f"{summary['miou_convention']})")
    lines.append(f"{'pixel acc.':<16}{100 * summary['pixel_accuracy']:>8.1f}")
    if summary.get("contour_f") is not None:
        lines.append(f"{'contour F':<16}{100 * summary['contour_f']:>8.1f}   (boundary F-measure, mean over "
                     f"foreground classes that occur)")
        lines.append(f"{'J&F':<16}{100 * summary['j_and_f']:>8.1f}   ((mIoU + contour F) / 2)")
    if summary.get("subset"):
        sub = summary["subset"]
        lines.append(f"{'subset mIoU':<16}{100 * sub['miou']:>8.1f}   ({len(sub['present'])} of the "
                     f"{len(sub['classes'])} named classes present: {', '.join(sub['present'])})")
    return "\n".join(lines)
