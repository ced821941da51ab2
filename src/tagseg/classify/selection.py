"""Best-epoch selection for the tag classifier (``train.select=best``): the score of an epoch is the
pseudo-mask mIoU on a fixed sample of ``data.val_split`` images, never on the images whose
pseudo-masks are scored (``data.pseudo_split``).

The sample is the first ``train.select_images`` ids of the val list (the list order, so every
epoch and every run sees the same images). Pseudo-masks come from the inference layer's rule for
the family with the run's ``pseudo`` settings, exactly as ``tagseg pseudo`` makes them; mIoU: one
confusion matrix over pixels whose ground truth is not 255, mean over the classes present in the
ground truth or the prediction (METHODS.md §6, the scorer's convention).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
from torch import nn

from tagseg.config import ExperimentConfig
from tagseg.data.build import build_index
from tagseg.data.records import DatasetIndex
from tagseg.data.views import image_to_tensor
from tagseg.engine.selection import evaluating, scheduled
from tagseg.errors import DataError
from tagseg.metrics.predict_and_score import predict_and_score
from tagseg.metrics.scorer import Scorer, matrix_miou
from tagseg.inference.pseudo import merged_probs_for
from tagseg.methods.families import get_family
from tagseg.utils.io import read_image


class ValPseudoMaskMIoU:
    """SelectFn: (core, 0-based epoch) -> val pseudo-mask mIoU, or None on epochs not scored."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        t = cfg.train
        self.cfg, self.every, self.epochs = cfg, t.select_every, t.epochs
        data = dataclasses.replace(cfg.data, max_images=t.select_images)
        self.index: DatasetIndex = build_index(data, cfg.data.val_split).require_nonempty()
        if any(r.mask_path is None for r in self.index.records):
            raise DataError(f"train.select=best scores pseudo-masks on {cfg.data.val_split!r}, but some of its "
                            "images have no ground-truth mask; use train.select=last")
        self.description = (f"pseudo-mask mIoU on the first {len(self.index)} images of "
                            f"{cfg.data.val_split!r} (not the scored {cfg.data.pseudo_split!r}), "
                            f"every {self.every} epoch(s) and the last")

    def __call__(self, core: nn.Module, epoch: int) -> Optional[float]:
        if not scheduled(epoch, self.every, self.epochs):
            return None
        rule = merged_probs_for(self.cfg.model.family)
        patch_size = get_family(self.cfg.model.family).patch_size
        k = self.index.num_classes
        scorer = Scorer(k, contour=False, per_image=False)
        with evaluating(core) as device:
            def predict(rec, gt: np.ndarray) -> np.ndarray:
                x = image_to_tensor(read_image(rec.image_path)).to(device)
                return rule(core, x, rec.labels, self.cfg.pseudo, patch_size=patch_size).argmax(0).cpu().numpy().astype(np.uint8)

            predict_and_score(self.index.records, predict, scorer, k)
        return matrix_miou(scorer.confusion.matrix) or 0.0


def selection_hook(cfg: ExperimentConfig) -> Optional[ValPseudoMaskMIoU]:
    """The best-epoch hook ``train.select`` asks for (None = keep the last epoch)."""
    return ValPseudoMaskMIoU(cfg) if cfg.train.select == "best" else None
