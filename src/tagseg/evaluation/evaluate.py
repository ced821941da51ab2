"""Score a folder of predicted masks against the ground truth of a dataset index."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

import statistics

from tagseg.data.records import DatasetIndex
from tagseg.errors import DataError
from tagseg.evaluation.contour import ContourFAccumulator, j_and_f
from tagseg.evaluation.miou import ConfusionMatrix, iou_from_matrix
from tagseg.evaluation.shards import accumulators, eval_state, merge_states, read_state, shard_of
from tagseg.utils.io import read_mask


def evaluate_folder(pred_dir: str | Path, index: DatasetIndex, progress: bool = True,
                    contour: bool = True, shard: tuple[int, int] = (0, 1)) -> dict:
    """mIoU, pixel accuracy, contour F and J&F of ``pred_dir/<id>.png`` over the records of
    ``index`` (which must have masks; with ``shard=(i, n)`` only shard i of n). Returns the summary
    of :func:`tagseg.evaluation.miou.summarize` plus 'contour' (per-class P/R/F), 'contour_f',
    'j_and_f', per-image mIoU ('per_image', worst first) and 'state', the sums that
    :func:`merge_eval_files` adds over shards.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(f"prediction folder not found: {pred_dir}")
    if not index.has_masks:
        missing = [r.id for r in index.records if r.mask_path is None][:5]
        raise DataError(f"dataset {index.name} has images without ground-truth masks (e.g. {missing})")
    records = shard_of(index.records, shard)
    k = index.num_classes
    cm = ConfusionMatrix(k)
    boundary = ContourFAccumulator(k, class_names=list(index.class_names)) if contour else None
    per_image = []
    missing_preds = [r.id for r in records if not (pred_dir / f"{r.id}.png").is_file()]
    if missing_preds:
        raise DataError(f"{len(missing_preds)} predictions missing in {pred_dir} (e.g. {missing_preds[:5]})")
    for rec in tqdm(records, desc="scoring", unit="img", disable=not progress, leave=False):
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
    summary = _summary(cm, boundary, per_image, index.class_names, index.name)
    summary["state"] = eval_state(cm, boundary, per_image, [r.id for r in records], shard)
    return summary


def merge_eval_files(paths: list[str | Path]) -> dict:
    """The whole set's summary from the eval.json of every shard (``eval --shard i/n``): their
    sums added, so it equals an unsharded evaluation exactly (DataError when a shard is missing,
    repeated, of another set, or its file is malformed)."""
    merged = merge_states([read_state(p) for p in paths])
    cm, boundary = accumulators(merged)
    summary = _summary(cm, boundary, merged["per_image"], merged["class_names"], merged["dataset"])
    summary.update(merged["extras"])
    summary["state"] = eval_state(cm, boundary, merged["per_image"], merged["ids"], (0, 1))
    return summary


def _summary(cm: ConfusionMatrix, boundary, per_image: list[dict], class_names, dataset) -> dict:
    summary = cm.summary(class_names)
    summary["images"] = len(per_image)
    summary["dataset"] = dataset
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
