"""Score a segmentation network on a split with ground truth: mIoU, contour F and J&F."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from tagseg.data.records import DatasetIndex
from tagseg.errors import DataError, TagsegError
from tagseg.metrics.predict_and_score import predict_and_score
from tagseg.metrics.scorer import Scorer, require_masks
from tagseg.metrics.shards import scorer_state
from tagseg.runner import ManifestInfo, OutputLayout, run_per_image, shard_of
from tagseg.segment.config import SegInferenceConfig
from tagseg.segment.inference import predict_mask
from tagseg.segment.models import SegmentationNet
from tagseg.utils.io import read_image, read_mask, save_mask_png


def check_class_names(model_names: Sequence[str], data_names: Sequence[str], model_desc: str, data_desc: str) -> None:
    """Raise TagsegError when a model's class list differs from a dataset's, naming both."""
    model_names, data_names = list(model_names), list(data_names)
    if model_names == data_names:
        return
    if len(model_names) != len(data_names):
        detail = f"{len(model_names)} classes vs {len(data_names)}"
    else:
        i = next(i for i, (a, b) in enumerate(zip(model_names, data_names)) if a != b)
        detail = f"class {i} is {model_names[i]!r} in the model but {data_names[i]!r} in the dataset"
    raise TagsegError(f"class-set mismatch: {model_desc} was trained on {model_names[:6]}"
                      f"{'...' if len(model_names) > 6 else ''} but {data_desc} has {data_names[:6]}"
                      f"{'...' if len(data_names) > 6 else ''} ({detail})")


def _size_mismatch(rec, gt: np.ndarray, image_shape: tuple[int, ...]) -> DataError:
    return DataError(f"mask {rec.mask_path} is {gt.shape[1]}×{gt.shape[0]} px but image "
                     f"{rec.image_path} is {image_shape[1]}×{image_shape[0]} px")


def masks_layout(save_dir: Path) -> OutputLayout:
    """``<save_dir>/<id>.png``: the predictions of ``segment eval --save-masks``."""
    return OutputLayout(save_dir, {"masks": ("{id}.png",)})


@torch.no_grad()
def evaluate_segmenter(model: SegmentationNet, index: DatasetIndex, inference: SegInferenceConfig,
                       device: torch.device | str = "cpu", progress: bool = True,
                       save_dir: Optional[Path] = None, palette: Optional[Sequence[int]] = None,
                       shard: tuple[int, int] = (0, 1), manifest: Optional[ManifestInfo] = None) -> dict:
    """Predict every image of ``index`` (which must have masks) and score it.

    Returns :func:`tagseg.metrics.miou.summarize`'s dict plus ``images``, ``dataset``,
    ``per_image`` (mIoU, worst first), ``contour_f`` (mean F over foreground classes),
    ``contour`` (per-class P/R/F and conventions), ``j_and_f`` and ``inference`` (settings used).
    ``save_dir``: the predictions are written there as ``<id>.png`` by the per-image runner (the
    folder's lock, atomic writes, ``manifest.json`` from ``manifest``), then scored from those
    files (lossless PNGs: the same scores). ``shard=(i, n)``: only shard i of n; ``state`` holds
    the sums ``tagseg eval --merge`` adds over shards.
    """
    index.require_nonempty()
    require_masks(index)
    records = shard_of(index.records, shard)
    k = index.num_classes
    scorer = Scorer(k, index.class_names)

    if save_dir is None:
        def predict(rec, gt: np.ndarray) -> np.ndarray:
            image = read_image(rec.image_path)
            if gt.shape != image.shape[:2]:
                raise _size_mismatch(rec, gt, image.shape)
            return predict_mask(model, image, inference, device)
    else:
        save_dir = Path(save_dir)
        layout = masks_layout(save_dir)
        colours = palette or index.palette

        def step(rec, paths: dict[str, Path]) -> None:
            mask = predict_mask(model, read_image(rec.image_path), inference, device)
            save_mask_png(paths["masks"], mask, colours, root=save_dir)

        run_per_image(index.records, step, layout, shard=shard, overwrite=True, progress=progress,
                      desc="predicting", manifest=manifest)

        def predict(rec, gt: np.ndarray) -> np.ndarray:
            pred = read_mask(layout.paths(rec.id)["masks"], k)  # the image's size
            if gt.shape != pred.shape:
                raise _size_mismatch(rec, gt, pred.shape)
            return pred

    predict_and_score(records, predict, scorer, k, progress=progress, desc="evaluating")
    summary = scorer.summary()
    summary["images"] = len(records)
    summary["dataset"] = index.name
    summary["inference"] = {"scales": list(inference.scales), "flip": inference.flip, "crf": inference.crf,
                            "crf_preset": inference.crf_preset}
    summary["state"] = scorer_state(scorer, [r.id for r in records], shard)
    return summary
