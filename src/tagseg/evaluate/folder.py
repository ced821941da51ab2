"""Score a folder of predicted masks against the ground truth of a dataset index."""

from __future__ import annotations

from pathlib import Path

import statistics

import numpy as np

from tagseg.data.records import DatasetIndex
from tagseg.errors import DataError
from tagseg.metrics.predict_and_score import predict_and_score
from tagseg.metrics.scorer import Scorer, require_masks
from tagseg.metrics.shards import merge_states, read_state, scorer_from_state, scorer_state
from tagseg.runner import shard_of
from tagseg.utils.io import read_mask


def evaluate_folder(pred_dir: str | Path, index: DatasetIndex, progress: bool = True,
                    contour: bool = True, shard: tuple[int, int] = (0, 1)) -> dict:
    """mIoU, pixel accuracy, contour F and J&F of ``pred_dir/<id>.png`` over the records of
    ``index`` (which must have masks; with ``shard=(i, n)`` only shard i of n). Returns the summary
    of :func:`tagseg.metrics.miou.summarize` plus 'contour' (per-class P/R/F), 'contour_f',
    'j_and_f', per-image mIoU ('per_image', worst first) and 'state', the sums that
    :func:`merge_eval_files` adds over shards.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(f"prediction folder not found: {pred_dir}")
    require_masks(index)
    records = shard_of(index.records, shard)
    k = index.num_classes
    scorer = Scorer(k, index.class_names, contour=contour)
    missing_preds = [r.id for r in records if not (pred_dir / f"{r.id}.png").is_file()]
    if missing_preds:
        raise DataError(f"{len(missing_preds)} predictions missing in {pred_dir} (e.g. {missing_preds[:5]})")

    def read_prediction(rec, gt: np.ndarray) -> np.ndarray:
        pred = read_mask(pred_dir / f"{rec.id}.png", k)
        if pred.shape != gt.shape:
            raise DataError(f"prediction {pred_dir / f'{rec.id}.png'} is {pred.shape[1]}×{pred.shape[0]} px but ground "
                            f"truth {rec.mask_path} is {gt.shape[1]}×{gt.shape[0]} px (image {rec.image_path})")
        return pred

    predict_and_score(records, read_prediction, scorer, k, progress=progress, desc="scoring")
    summary = _summary(scorer, index.name)
    summary["state"] = scorer_state(scorer, [r.id for r in records], shard)
    return summary


def merge_eval_files(paths: list[str | Path]) -> dict:
    """The whole set's summary from the eval.json of every shard (``eval --shard i/n``): their
    sums added, so it equals an unsharded evaluation exactly (DataError when a shard is missing,
    repeated, of another set, or its file is malformed)."""
    merged = merge_states([read_state(p) for p in paths])
    scorer = scorer_from_state(merged)
    summary = _summary(scorer, merged["dataset"])
    summary.update(merged["extras"])
    summary["state"] = scorer_state(scorer, merged["ids"], (0, 1))
    return summary


def _summary(scorer: Scorer, dataset) -> dict:
    summary = scorer.summary()
    summary["images"] = len(scorer.per_image)
    summary["dataset"] = dataset
    return summary


RUN_METRICS = {"miou": "mIoU", "contour_f": "contour F", "j_and_f": "J&F", "pixel_accuracy": "pixel acc.",
               "subset_miou": "subset mIoU"}  # subset: only with ``tagseg eval --classes``


def _metric(summary: dict, key: str):
    if key == "subset_miou":
        return (summary.get("subset") or {}).get("miou")
    return summary.get(key)


def compare_runs(summaries: list[dict], names: list[str]) -> dict:
    """Several folders side by side: ``{"runs": names, "class_names": [...], "per_run": [{metric:
    value, "iou": per-class IoU (None: class absent), "miou_classes": [...]}]}`` with the metrics of
    :data:`RUN_METRICS` (None where a summary has no such value)."""
    return {"runs": list(map(str, names)), "class_names": summaries[0].get("class_names"),
            "per_run": [{**{key: _metric(s, key) for key in RUN_METRICS}, "iou": s.get("iou"),
                         "miou_classes": s.get("miou_classes")} for s in summaries]}


def summarize_runs(summaries: list[dict], names: list[str]) -> dict:
    """:func:`compare_runs` plus the mean ± sample std of each metric over the runs, for folders
    that are seeds of one setting (averaging different kinds of masks means nothing)."""
    metrics = {}
    for key in RUN_METRICS:
        values = [_metric(s, key) for s in summaries if _metric(s, key) is not None]
        if values:
            metrics[key] = {"mean": statistics.mean(values),
                            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}
    return {**compare_runs(summaries, names), "metrics": metrics,
            "std_convention": "sample standard deviation (n-1) over runs"}


def format_runs(runs: dict) -> str:
    """The folders of :func:`compare_runs` / :func:`summarize_runs` as a table, one row each (%),
    with a mean ± std row when the runs were summarised as seeds (the subset column only when
    some folder has one)."""
    width = max(len(n) for n in runs["runs"])
    keys = [k for k in RUN_METRICS if k != "subset_miou" or any(r.get(k) is not None for r in runs["per_run"])]
    lines = [f"{'folder':<{width}}" + "".join(f"{RUN_METRICS[k]:>12}" for k in keys)]
    for name, row in zip(runs["runs"], runs["per_run"]):
        lines.append(f"{name:<{width}}" + "".join("{:>12}".format("-" if row.get(k) is None else f"{100 * row[k]:.1f}")
                                                 for k in keys))
    if "metrics" in runs:
        m = runs["metrics"]
        lines.append(f"{'mean ± std':<{width}}" + "".join(
            "{:>12}".format(f"{100 * m[k]['mean']:.1f} ± {100 * m[k]['std']:.1f}" if k in m else "-")
            for k in keys) + f"   (over {len(runs['runs'])} runs; sample std)")
    return "\n".join(lines)
