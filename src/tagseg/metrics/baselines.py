"""Reference points for a pseudo-mask mIoU: what a label-aware guess scores without looking."""

from __future__ import annotations

import numpy as np

from tagseg.data.records import DatasetIndex
from tagseg.metrics.miou import ConfusionMatrix
from tagseg.utils.io import read_mask


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
    for rec in index.records:
        gt = read_mask(rec.mask_path, k)
        present = np.flatnonzero(rec.labels > 0.5)
        cms["all background"].update(np.zeros_like(gt), gt)
        cms["random present class"].update(rng.choice(present, size=gt.shape).astype(np.uint8), gt)
        fg = present[present > 0]
        cms["one present class"].update(np.full_like(gt, fg[0] if fg.size else 0), gt)
    return {name: cm.summary(index.class_names) for name, cm in cms.items()}
