"""Reference points for a pseudo-mask mIoU: what a label-aware guess scores without looking."""

from __future__ import annotations

import numpy as np

from tagseg.data.records import DatasetIndex
from tagseg.metrics.miou import ConfusionMatrix
from tagseg.metrics.predict_and_score import predict_and_score


def chance_baselines(index: DatasetIndex, seed: int = 0) -> dict[str, dict]:
    """Scores of guesses that use the image-level labels but no image content:

    - 'all background': every pixel background;
    - 'random present class': each pixel a uniformly random class among the image's labels
      (background included);
    - 'one present class': every pixel the image's first present object class.
    """
    k = index.num_classes
    rng = np.random.default_rng(seed)
    cms = {name: ConfusionMatrix(k) for name in ("all background", "random present class", "one present class")}

    def guesses(rec, gt: np.ndarray) -> dict[str, np.ndarray]:
        present = np.flatnonzero(rec.labels > 0.5)
        fg = present[present > 0]
        return {"all background": np.zeros_like(gt),
                "random present class": rng.choice(present, size=gt.shape).astype(np.uint8),
                "one present class": np.full_like(gt, fg[0] if fg.size else 0)}

    predict_and_score(index.records, guesses, cms, k)
    return {name: cm.summary(index.class_names) for name, cm in cms.items()}
