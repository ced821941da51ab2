"""Score a folder of predicted masks against the ground truth of a dataset index."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

import statistics

from tagseg.data.records import DatasetIndex
from tagseg.errors import DataError
from tagseg.evaluation.contour import ContourFAccumulator, j_and_f
from tagseg.evaluation.miou import ConfusionMatrix, iou_from_matrix
from tagseg.utils.io import read_mask


def evaluate_folder(pred_dir: str | Path, index: DatasetIndex, progress: bool = True,
                    contour: bool = True) -> dict:
    """mIoU, pixel accuracy, contour F and J&F of ``pred_dir/<id>.png`` over the records of
    ``index`` (which must have masks). Returns the summary of
    :func:`tagseg.evaluation.miou.summarize` plus 'contour' (per-class P/R/F), 'contour_f',
    'j_and_f' and per-image mIoU ('per_image', worst first).
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(f"prediction folder not found: {pred_dir}")
    if not index.has_masks:
        missing = [r.id for r in index.records if r.mask_path is None][:5]
        raise DataError(f"dataset {index.name} has images without ground-truth masks (e.g. {missing})")
    k = index.num_classes
    cm = ConfusionMatrix(k)
    boundary = ContourFAccumulator(k, class_names=list(index.class_names)) if contour else None
    per_image = []
    missing_preds = [r.id for r in index.records if not (pred_dir / f"{r.id}.png").is_file()]
    if missing_preds:
        raise DataError(f"{len(missing_preds)} predictions missing in {pred_dir} (e.g. {missing_preds[:5]})")
    for rec in tqdm(index.records, desc="scoring", unit="img", disable=not progress, leave=False):
        pred = read_mask(pred_dir / f"{rec.id}.png", k)
        gt = read_mask(rec.mask_path, k)
        if pred.shape != gt.shape:
            raise DataError(f"prediction {pred_dir / f'{rec.id}.png'} is {pred.shape[1]}×{pred.shape[0]} px but ground "
                            f"truth {rec.mask_path} is {gt.shape[1]}×{gt.shape[0]} px (image {rec.image_path})")
        m = cm.update(pred, gt, name=rec.id)
        if boundary is not None:
            boundary.update(pred, gt, name=rec.id)
        iou = iou_from_matrix(m)
        per_image.append({"id": rec.id, "miou": float(iou[~(iou != iou)].mean()) if (iou == iou).any() else None})
    summary = cm.summary(index.class_names)
    summary["images"] = len(index)
    summary["dataset"] = index.name
    if boundary is not None:
        summary["contour"] = boundary.result()
        summary["contour_f"] = summary["contour"]["mean_F"]
        summary["j_and_f"] = (j_and_f(summary["miou"], summary["contour_f"])
                              if summary["contour_f"] is not None else None)
    summary["per_image"] = sorted(per_image, key=lambda r: (r["miou"] is None, r["miou"] or 0.0))
    return summary


def summarize_runs(summaries: list[dict], names: list[str]) -> dict:
    """Mean ± sample std of mIoU, pixel accuracy, contour F and J&F over several runs (seeds)."""
    metrics = {}
    for key in ("miou", "contour_f", "j_and_f", "pixel_accuracy"):
        values = [s[key] for s in summaries if s.get(key) is not None]
        if values:
            metrics[key] = {"mean": statistics.mean(values),
                            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}
    return {"runs": list(map(str, names)), "metrics": metrics,
            "std_convention": "sample standard deviation (n-1) over runs"}
