"""Score a folder of predicted masks against the ground truth of a dataset index."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from tqdm import tqdm

from tagseg.data.records import DatasetIndex
from tagseg.errors import DataError
from tagseg.evaluation.miou import ConfusionMatrix, iou_from_matrix
from tagseg.utils.io import read_mask


def evaluate_folder(pred_dir: str | Path, index: DatasetIndex, progress: bool = True,
                    extra_metrics: Optional[list] = None) -> dict:
    """mIoU etc. of ``pred_dir/<id>.png`` over the records of ``index`` (which must have masks).

    extra_metrics: objects with ``update(pred, gt)`` (e.g. a contour-F accumulator), fed the same pairs.
    Returns the summary dict plus per-image mIoU ('per_image', worst first).
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(f"prediction folder not found: {pred_dir}")
    if not index.has_masks:
        missing = [r.id for r in index.records if r.mask_path is None][:5]
        raise DataError(f"dataset {index.name} has images without ground-truth masks (e.g. {missing})")
    k = index.num_classes
    cm = ConfusionMatrix(k)
    per_image = []
    missing_preds = [r.id for r in index.records if not (pred_dir / f"{r.id}.png").is_file()]
    if missing_preds:
        raise DataError(f"{len(missing_preds)} predictions missing in {pred_dir} (e.g. {missing_preds[:5]})")
    for rec in tqdm(index.records, desc="scoring", unit="img", disable=not progress, leave=False):
        pred = read_mask(pred_dir / f"{rec.id}.png", k)
        gt = read_mask(rec.mask_path, k)
        m = cm.update(pred, gt, name=rec.id)
        for metric in extra_metrics or []:
            metric.update(pred, gt)
        iou = iou_from_matrix(m)
        per_image.append({"id": rec.id, "miou": float(iou[~(iou != iou)].mean()) if (iou == iou).any() else None})
    summary = cm.summary(index.class_names)
    summary["images"] = len(index)
    summary["dataset"] = index.name
    summary["per_image"] = sorted(per_image, key=lambda r: (r["miou"] is None, r["miou"] or 0.0))
    return summary
