"""mIoU against a hand example."""

import numpy as np
import pytest

from tagseg.errors import DataError
from tagseg.metrics.miou import ConfusionMatrix, format_table, subset_miou


def test_miou_hand_example():
    gt = np.array([[0, 0, 1], [1, 1, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [1, 2, 0]], dtype=np.uint8)
    cm = ConfusionMatrix(4)
    cm.update(pred, gt)
    s = cm.summary(["bg", "a", "b", "c"])
    # class 0: tp 1, gt 2, pred 1 -> 1/2; class 1: tp 2, gt 3, pred 3 -> 2/4; class 2: 0/1; class 3 absent
    assert s["iou"] == [0.5, 0.5, 0.0, None]
    assert s["miou"] == pytest.approx(1 / 3)
    assert s["miou_classes"] == ["bg", "a", "b"]
    assert s["pixel_accuracy"] == pytest.approx(3 / 5)
    assert s["pixels"] == 5


def test_subset_miou_averages_only_the_named_present_classes():
    gt = np.array([[0, 0, 1], [1, 1, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [1, 2, 0]], dtype=np.uint8)
    cm = ConfusionMatrix(4)
    cm.update(pred, gt)
    s = cm.summary(["bg", "a", "b", "c"])  # IoU 0.5, 0.5, 0.0, absent (hand example above)
    sub = subset_miou(s, ["a", "b", "c"])
    assert sub["miou"] == pytest.approx(0.25)  # (0.5 + 0.0) / 2: c is absent, not a zero
    assert sub["present"] == ["a", "b"] and sub["classes"] == ["a", "b", "c"]
    assert subset_miou(s, ["bg"])["miou"] == 0.5
    assert np.isnan(subset_miou(s, ["c"])["miou"])
    s["subset"] = sub
    assert "subset mIoU" in format_table(s) and "2 of the 3 named classes present: a, b" in format_table(s)
    with pytest.raises(ValueError, match="unknown classes \\['cat'\\]"):
        subset_miou(s, ["a", "cat"])


def test_confusion_accumulates_and_penalises_abstention():
    cm = ConfusionMatrix(2)
    gt = np.array([[0, 1]], dtype=np.uint8)
    cm.update(np.array([[0, 1]], dtype=np.uint8), gt)
    cm.update(np.array([[0, 255]], dtype=np.uint8), gt)  # no decision on a class-1 pixel
    s = cm.summary(["bg", "a"])
    assert s["iou"] == [1.0, 0.5]
    assert s["pixel_accuracy"] == pytest.approx(3 / 4)


def test_miou_bad_input():
    cm = ConfusionMatrix(3)
    with pytest.raises(DataError, match="shape"):
        cm.update(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8))
    with pytest.raises(DataError, match=r"values \[7\]"):
        cm.update(np.full((2, 2), 7, np.uint8), np.zeros((2, 2), np.uint8), name="x")
