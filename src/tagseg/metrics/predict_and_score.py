"""The one "for each image: read the ground truth, predict, score" loop.

Every scorer of predictions against ground-truth masks goes through :func:`predict_and_score`:
``eval``'s folder scoring, ``segment eval``, both best-epoch hooks, the background sweep and the
benchmarks. What differs between them is only how an image is predicted (a callable) and which
accumulators collect the scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, Union

import numpy as np
from tqdm import tqdm

from tagseg.utils.io import read_mask


class Accumulator(Protocol):
    """Anything that adds one image's scores: :class:`~tagseg.metrics.scorer.Scorer`,
    :class:`~tagseg.metrics.miou.ConfusionMatrix`."""

    def update(self, pred: np.ndarray, gt: np.ndarray, name: str = "") -> Any: ...


Prediction = Union[np.ndarray, Mapping[Any, np.ndarray]]
Predict = Callable[[Any, np.ndarray], Prediction]
"""(record, its ground truth uint8 (H, W)) -> uint8 (H, W) mask, or {accumulator key: mask}."""


def predict_and_score(records: Sequence[Any], predict: Predict,
                      scorers: Union[Accumulator, Mapping[Any, Accumulator]], num_classes: int, *,
                      gt_path: Optional[Callable[[Any], Path]] = None, progress: bool = False,
                      desc: str = "scoring") -> int:
    """Score every record in order: read its ground truth (``gt_path(record)``, default
    ``record.mask_path``; 255 = ignore), call ``predict(record, gt)`` and add each returned mask
    to its accumulator (one accumulator: ``predict`` returns one mask; a mapping: it returns
    masks by the same keys — keys it leaves out are not updated for that image). Returns the
    number of images scored."""
    path_of = gt_path or (lambda r: r.mask_path)
    single = not isinstance(scorers, Mapping)
    n = 0
    for rec in tqdm(records, desc=desc, unit="img", disable=not progress, leave=False):
        gt = read_mask(path_of(rec), num_classes)
        pred = predict(rec, gt)
        if single:
            scorers.update(pred, gt, name=rec.id)  # type: ignore[union-attr]
        else:
            for key, mask in pred.items():  # type: ignore[union-attr]
                scorers[key].update(mask, gt, name=rec.id)  # type: ignore[index]
        n += 1
    return n
