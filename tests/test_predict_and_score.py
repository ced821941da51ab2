"""predict_and_score: the one loop every scorer of predictions against ground truth runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fixtures import write_mask
from tagseg.metrics.miou import ConfusionMatrix
from tagseg.metrics.predict_and_score import predict_and_score
from tagseg.metrics.scorer import Scorer


@dataclass
class Rec:
    id: str
    mask_path: Path


def _records(tmp_path: Path) -> list[Rec]:
    gts = [np.array([[0, 1], [1, 255]], np.uint8), np.array([[2, 2], [0, 1]], np.uint8)]
    recs = []
    for i, gt in enumerate(gts):
        write_mask(tmp_path / f"g{i}.png", gt)
        recs.append(Rec(f"g{i}", tmp_path / f"g{i}.png"))
    return recs


def test_one_accumulator_sees_every_image_in_order_with_its_ground_truth(tmp_path):
    recs = _records(tmp_path)
    seen = []

    def predict(rec, gt):
        seen.append((rec.id, gt.tolist()))
        return np.zeros_like(gt)

    cm = ConfusionMatrix(3)
    assert predict_and_score(recs, predict, cm, 3) == 2
    assert seen == [("g0", [[0, 1], [1, 255]]), ("g1", [[2, 2], [0, 1]])]
    # all-background prediction: gt 0 hit twice; gt 1 (3 px) and gt 2 (2 px) predicted 0; 255 ignored
    assert cm.matrix[:, :3].tolist() == [[2, 0, 0], [3, 0, 0], [2, 0, 0]]


def test_several_accumulators_by_key_and_a_ground_truth_elsewhere(tmp_path):
    recs = _records(tmp_path)
    moved = {r.id: r.mask_path for r in recs}
    for r in recs:
        r.mask_path = tmp_path / "absent.png"
    scorers = {"gt": Scorer(3, contour=False, per_image=False), "zero": Scorer(3, contour=False, per_image=False)}
    predict_and_score(recs, lambda rec, gt: {"gt": gt.copy(), "zero": np.zeros_like(gt)}, scorers, 3,
                      gt_path=lambda rec: moved[rec.id])
    assert scorers["gt"].summary()["miou"] == 1.0
    # all zeros: IoU(bg) = 2/7, IoU(1) = IoU(2) = 0 -> mIoU = 2/21
    assert scorers["zero"].summary()["miou"] == pytest.approx(2 / 21)
