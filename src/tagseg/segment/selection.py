"""Best-epoch selection for the segmentation stage (``train.select=best``).

The papers report DeepLab's mIoU on ``val``, so ``val`` may not choose the epoch. The score is the
mIoU of single-scale predictions (no flip, no CRF) against the training masks the run uses (the
pseudo-masks, or the ground truth with ``segment.masks_dir=gt``) on the first
``train.select_images`` images of ``data.train_split``: it needs no ground truth and never sees
the scored split; it measures how well the network reproduces its targets, which stops a run
whose later epochs diverge from keeping them.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from torch import nn

from tagseg.data.build import build_index
from tagseg.engine.selection import evaluating, scheduled
from tagseg.metrics.predict_and_score import predict_and_score
from tagseg.metrics.scorer import Scorer
from tagseg.segment.config import SegInferenceConfig, SegmentExperimentConfig
from tagseg.segment.data import choose_mask_folder, resolve_mask_paths
from tagseg.segment.inference import predict_mask
from tagseg.utils.io import read_image

SINGLE_SCALE = SegInferenceConfig(scales=[1.0], flip=False, crf="none")


class TrainMaskAgreement:
    """SelectFn: (core, 0-based epoch) -> mIoU against the training masks, or None on epochs not scored."""

    def __init__(self, cfg: SegmentExperimentConfig) -> None:
        t = cfg.train
        self.every, self.epochs = t.select_every, t.epochs
        data = dataclasses.replace(cfg.data, max_images=t.select_images)
        self.index = build_index(data, cfg.data.train_split).require_nonempty()
        folder, kind = choose_mask_folder(cfg.segment.masks_dir, cfg.segment.mask_kind)
        self.masks = resolve_mask_paths(self.index, folder)
        self.description = (f"mIoU of single-scale predictions against the {kind} training masks on the first "
                            f"{len(self.index)} images of {cfg.data.train_split!r} (not the scored "
                            f"{cfg.data.val_split!r}), every {self.every} epoch(s) and the last")

    def __call__(self, core: nn.Module, epoch: int) -> Optional[float]:
        if not scheduled(epoch, self.every, self.epochs):
            return None
        k = self.index.num_classes
        scorer = Scorer(k, self.index.class_names, contour=False, per_image=False)
        masks = dict(zip((r.id for r in self.index.records), self.masks))
        with evaluating(core) as device:
            predict_and_score(self.index.records,
                              lambda rec, gt: predict_mask(core, read_image(rec.image_path), SINGLE_SCALE, device),
                              scorer, k, gt_path=lambda rec: masks[rec.id])
        return float(scorer.summary()["miou"])


def segmentation_selection_hook(cfg: SegmentExperimentConfig) -> Optional[TrainMaskAgreement]:
    """The hook ``train.select`` asks for (None = keep the last epoch)."""
    return TrainMaskAgreement(cfg) if cfg.train.select == "best" else None

