"""Score a folder of predicted masks against the ground truth of a dataset index."""

from __future__ import annotations

from pathlib import Path

import statistics

from tqdm import tqdm

from tagseg.data.records import DatasetIndex
from tagseg.errors import DataError
from tagseg.evaluation.scorer import Scorer, require_masks
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
    require_masks(index)
    k = index.num_classes
    scorer = Scorer(k, index.class_names, contour=contour)
    missing_preds = [r.id for r in index.records if not (pred_dir / f"{r.id}.png").is_file()]
    if missing_preds:
        raise DataError(f"{len(missing_preds)} predictions missing in {pred_dir} (e.g. {missing_preds[:5]})")
    for rec in tqdm(index.records, desc="scoring", unit="img", disable=not progress, leave=False):
        scorer.update(read_mask(pred_dir / f"{rec.id}.png", k), read_mask(rec.mask_path, k), name=rec.id)
    summary = scorer.summary()
    summary["images"] = len(index)
    summary["dataset"] = index.name
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
