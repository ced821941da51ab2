"""The one scorer: hand-computed mIoU / contour F / J&F, per-image scores, merging shards."""

import numpy as np
import pytest

from tagseg.metrics.contour import ContourFAccumulator
from tagseg.metrics.scorer import Scorer, image_miou


def _square(size: int, lo: int, hi: int, cls: int = 1) -> np.ndarray:
    m = np.zeros((size, size), dtype=np.uint8)
    m[lo:hi, lo:hi] = cls
    return m


def test_scorer_hand_example():
    gt = np.array([[0, 0, 1], [1, 1, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [1, 2, 0]], dtype=np.uint8)
    scorer = Scorer(4, ["bg", "a", "b", "c"])
    assert scorer.update(pred, gt, name="x") == pytest.approx((0.5 + 0.5 + 0.0) / 3)  # see test_miou
    s = scorer.summary()
    assert s["iou"] == [0.5, 0.5, 0.0, None] and s["miou"] == pytest.approx(1 / 3)
    assert s["pixel_accuracy"] == pytest.approx(3 / 5)
    assert s["per_image"] == [{"id": "x", "miou": pytest.approx(1 / 3)}]
    # contour: identical masks -> F = 1, J&F = (mIoU + F) / 2
    same = Scorer(2)
    same.update(_square(20, 5, 15), _square(20, 5, 15), name="a")
    t = same.summary()
    assert t["miou"] == 1.0 and t["contour_f"] == 1.0 and t["j_and_f"] == 1.0


def test_per_image_scores_worst_first_and_undefined_last():
    scorer = Scorer(2, contour=False)
    gt = _square(10, 2, 8)
    scorer.update(gt, gt, name="perfect")
    scorer.update(np.zeros_like(gt), gt, name="empty")  # IoU bg = 64/100, class 1 = 0 -> 0.32
    scorer.update(gt, np.full_like(gt, 255), name="unlabelled")  # no pixel counts
    ids = [r["id"] for r in scorer.summary()["per_image"]]
    assert ids == ["empty", "perfect", "unlabelled"]
    assert scorer.summary()["per_image"][0]["miou"] == pytest.approx((64 / 100 + 0) / 2)
    assert "contour_f" not in scorer.summary()
    assert image_miou(gt, np.full_like(gt, 255), 2) is None


def test_merged_shards_equal_one_pass():
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 3, (16, 16)).astype(np.uint8) for _ in range(6)]
    gts = [_square(16, i, 10 + i, cls=1 + i % 2) for i in range(6)]
    whole = Scorer(3)
    a, b = Scorer(3), Scorer(3)
    for i, (p, g) in enumerate(zip(preds, gts)):
        whole.update(p, g, name=str(i))
        (a if i % 2 else b).update(p, g, name=str(i))
    merged = a.merge(b).summary()
    ref = whole.summary()
    for key in ("iou", "miou", "pixel_accuracy", "confusion", "contour_f", "j_and_f", "contour"):
        assert merged[key] == ref[key], key
    assert sorted(r["id"] for r in merged["per_image"]) == [str(i) for i in range(6)]
    with pytest.raises(ValueError):
        Scorer(3).merge(Scorer(4))


def test_contour_part_equals_the_accumulator():
    pred, gt = _square(40, 10, 30), _square(40, 12, 30)
    scorer, acc = Scorer(2), ContourFAccumulator(2)
    scorer.update(pred, gt)
    acc.update(pred, gt)
    s = scorer.summary()
    assert s["contour_f"] == acc.result()["mean_F"] and 0 < s["contour_f"] < 1
    assert s["j_and_f"] == pytest.approx((s["miou"] + s["contour_f"]) / 2)
