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


def test_chance_baselines_through_the_loop_equal_a_plain_reference(tmp_path):
    """The label-aware chance guesses go through predict_and_score; the scores (random draws
    included) equal a plain loop's, written out here as the reference."""
    from fixtures import make_folder
    from tagseg.data.folder import read_folder
    from tagseg.metrics.baselines import chance_baselines
    from tagseg.utils.io import read_mask

    make_folder(tmp_path / "data", n=5)
    index = read_folder(tmp_path / "data")
    k = index.num_classes
    rng = np.random.default_rng(3)
    ref = {name: ConfusionMatrix(k) for name in ("all background", "random present class", "one present class")}
    for rec in index.records:
        gt = read_mask(rec.mask_path, k)
        present = np.flatnonzero(rec.labels > 0.5)
        ref["all background"].update(np.zeros_like(gt), gt)
        ref["random present class"].update(rng.choice(present, size=gt.shape).astype(np.uint8), gt)
        fg = present[present > 0]
        ref["one present class"].update(np.full_like(gt, fg[0] if fg.size else 0), gt)
    got = chance_baselines(index, seed=3)
    assert got == {name: cm.summary(index.class_names) for name, cm in ref.items()}
    assert got["all background"]["iou"][1:] == [0.0] * (k - 1)  # no foreground pixel is ever guessed
