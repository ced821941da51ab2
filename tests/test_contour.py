"""Tests for contour F (boundary F-measure) and J&F."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tagseg.errors import ConfigError, DataError
from functools import partial

from tagseg.metrics.contour import ContourFAccumulator as _Accumulator
from tagseg.metrics.contour import (
    boundary_map,
    count_matched_points,
    disk,
    j_and_f,
    matched_pixels,
    matched_pixels_dilation,
    tolerance_radius,
)

# The tests below were worked out for the inner 4-neighbourhood boundary (the earlier default,
# kept as boundary="inner4"); the DAVIS seg2bmap default has its own hand-made cases at the end.
ContourFAccumulator = partial(_Accumulator, boundary="inner4")


# ---------------------------------------------------------------- plain-loop references

def brute_boundary(region: np.ndarray) -> np.ndarray:
    """Region pixels with an in-image 4-neighbour outside the region (plain loops)."""
    h, w = region.shape
    out = np.zeros((h, w), dtype=bool)
    for y in range(h):
        for x in range(w):
            if not region[y, x]:
                continue
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                ny, nx = y + dy, x + dx
                if 0 <= ny < h and 0 <= nx < w and not region[ny, nx]:
                    out[y, x] = True
    return out


def brute_matched(boundary: np.ndarray, other: np.ndarray, radius: int) -> int:
    """Number of boundary pixels with some other-boundary pixel at Euclidean distance <= r."""
    others = list(zip(*np.nonzero(other)))
    count = 0
    for y, x in zip(*np.nonzero(boundary)):
        if any(math.hypot(y - oy, x - ox) <= radius for oy, ox in others):
            count += 1
    return count


def brute_counts(pred: np.ndarray, gt: np.ndarray, num_classes: int, radius: int) -> dict:
    """Per-class (matched_pred, total_pred, matched_gt, total_gt, present) for one image."""
    gt = np.where(gt == 255, 0, gt)
    counts = {}
    for c in range(1, num_classes):
        pr, gr = pred == c, gt == c
        if not pr.any() and not gr.any():
            continue
        pb, gb = brute_boundary(pr), brute_boundary(gr)
        counts[c] = (
            brute_matched(pb, gb, radius), int(pb.sum()),
            brute_matched(gb, pb, radius), int(gb.sum()),
        )
    return counts


def square(h: int, w: int, top: int, left: int, size: int, value: int = 1) -> np.ndarray:
    m = np.zeros((h, w), dtype=np.uint8)
    m[top:top + size, left:left + size] = value
    return m


def random_blobs(rng: np.random.Generator, h: int, w: int, num_classes: int) -> np.ndarray:
    """Label map of a few random rectangles over background (uint8)."""
    m = np.zeros((h, w), dtype=np.uint8)
    for _ in range(rng.integers(1, 6)):
        c = rng.integers(1, num_classes)
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        y1, x1 = y0 + rng.integers(1, h // 2 + 2), x0 + rng.integers(1, w // 2 + 2)
        m[y0:y1, x0:x1] = c
    return m


# ---------------------------------------------------------------- boundary map

def test_boundary_of_square_is_its_ring():
    region = square(8, 8, 2, 2, 4).astype(bool)
    b = boundary_map(region)
    expected = region.copy()
    expected[3:5, 3:5] = False  # interior 2x2
    assert b.sum() == 12
    np.testing.assert_array_equal(b, expected)


def test_image_edge_is_not_boundary():
    assert not boundary_map(np.ones((5, 7), dtype=bool)).any()
    # a region touching the left edge: the edge column is boundary only where it meets
    # a pixel outside the region inside the image
    region = np.zeros((5, 7), dtype=bool)
    region[:, :3] = True
    b = boundary_map(region)
    np.testing.assert_array_equal(np.nonzero(b)[1], np.full(5, 2))


def test_single_pixel_and_empty():
    region = np.zeros((3, 3), dtype=bool)
    assert not boundary_map(region).any()
    region[1, 1] = True
    np.testing.assert_array_equal(boundary_map(region), region)


@pytest.mark.parametrize("seed", range(4))
def test_boundary_matches_plain_loops(seed):
    rng = np.random.default_rng(seed)
    region = rng.random((20, 30)) < 0.5
    np.testing.assert_array_equal(boundary_map(region), brute_boundary(region))


def test_boundary_rejects_3d():
    with pytest.raises(DataError, match="2-D"):
        boundary_map(np.zeros((2, 3, 4), dtype=bool))


# ---------------------------------------------------------------- tolerance and matching

def test_tolerance_radius():
    assert tolerance_radius(375, 500) == 5  # diagonal 625 -> 0.008 * 625 = 5.0 exactly
    assert tolerance_radius(300, 400) == 4  # diagonal 500 -> 4.0
    assert tolerance_radius(12, 12) == 1  # 0.136 -> 1
    assert tolerance_radius(366, 500) == 5  # diagonal 619.7 -> 4.96 -> 5
    assert tolerance_radius(400, 500) == 6  # diagonal 640.3 -> 5.12 -> 6
    assert tolerance_radius(100, 100, ratio=0.05) == 8  # 7.07 -> 8
    with pytest.raises(ConfigError):
        tolerance_radius(10, 10, ratio=0.0)
    with pytest.raises(DataError):
        tolerance_radius(0, 10)


def test_disk():
    d = disk(2)
    assert d.shape == (5, 5)
    assert d.sum() == 13  # offsets with dy^2 + dx^2 <= 4
    assert disk(0).tolist() == [[True]]
    assert d[0, 2] and not d[0, 1]


def test_shifted_square_hand_counts():
    # GT: 5x5 square rows 2..6, cols 2..6; prediction shifted right by 2 columns.
    gt = square(12, 12, 2, 2, 5)
    pred = square(12, 12, 2, 4, 5)
    pb, gb = boundary_map(pred == 1), boundary_map(gt == 1)
    assert pb.sum() == gb.sum() == 16
    # r = 1: top and bottom rows match 4 of 5 each, the left column of the prediction
    # matches its two corners' neighbours (3,4),(5,4), the right column none -> 10.
    assert matched_pixels(pb, gb, 1).sum() == 10
    assert matched_pixels(gb, pb, 1).sum() == 10
    # r = 2: every pixel is within 2 of the other ring.
    assert matched_pixels(pb, gb, 2).sum() == 16
    # r = 0: only the shared pixels (top/bottom rows at cols 4..6, and col 4/6 overlap)
    shared = pb & gb
    assert matched_pixels(pb, gb, 0).sum() == shared.sum() == 6

    acc = ContourFAccumulator(num_classes=2)  # 12x12 image -> r = 1
    acc.update(pred, gt)
    res = acc.result()["per_class"]["1"]
    assert (res["matched_pred"], res["total_pred"], res["matched_gt"], res["total_gt"]) == (10, 16, 10, 16)
    assert res["P"] == pytest.approx(0.625) and res["R"] == pytest.approx(0.625)
    assert res["F"] == pytest.approx(0.625)


def test_asymmetric_precision_recall_hand_counts():
    # GT 6x6 square, prediction 4x4 square in its top-left corner; r = 1 (12x12 image).
    gt = square(12, 12, 2, 2, 6)
    pred = square(12, 12, 2, 2, 4)
    acc = ContourFAccumulator(num_classes=2)
    acc.update(pred, gt)
    res = acc.result()["per_class"]["1"]
    # pred ring (12 px): row 2 (4 px) and (3,2),(4,2),(5,2) lie on the GT ring; (5,3) and
    # (3,5) are at distance 1 from (5,2) and (2,5); (5,4),(5,5),(4,5) are at distance 2.
    assert res["total_pred"] == 12 and res["matched_pred"] == 9
    # GT ring (20 px): (2,2..5) and (3..5,2) lie on the prediction ring, (2,6) and (6,2)
    # are at distance 1; (2,7), (7,*) and (*,7) are at distance >= 2 -> 9 of 20.
    assert res["total_gt"] == 20 and res["matched_gt"] == 9
    p, r = 9 / 12, 9 / 20
    assert res["P"] == pytest.approx(p) and res["R"] == pytest.approx(r)
    assert res["F"] == pytest.approx(2 * p * r / (p + r))


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("seed", range(3))
def test_distance_transform_equals_dilation_and_brute_force(seed, radius):
    rng = np.random.default_rng(100 + seed)
    a = boundary_map(rng.random((20, 30)) < 0.3)
    b = boundary_map(rng.random((20, 30)) < 0.3)
    fast = matched_pixels(a, b, radius)
    np.testing.assert_array_equal(fast, matched_pixels_dilation(a, b, radius))
    assert fast.sum() == brute_matched(a, b, radius)


@pytest.mark.parametrize("radius", [0, 1, 2, 4, 7])
@pytest.mark.parametrize("seed", range(3))
def test_sparse_count_equals_distance_transform(seed, radius):
    rng = np.random.default_rng(200 + seed)
    a = boundary_map(rng.random((20, 30)) < 0.2)
    b = boundary_map(rng.random((20, 30)) < 0.2)
    pa, pb = np.argwhere(a), np.argwhere(b)
    assert count_matched_points(pa, pb, radius) == matched_pixels(a, b, radius).sum()
    assert count_matched_points(pb, pa, radius) == brute_matched(b, a, radius)


def test_sparse_count_distance_exactly_r():
    # points at squared distance r^2 match, r^2 + 1 do not (3-4-5 triangle, r = 5)
    origin = np.array([[0, 0]])
    assert count_matched_points(origin, np.array([[3, 4]]), 5) == 1
    assert count_matched_points(origin, np.array([[1, 5]]), 5) == 0  # sqrt(26)
    assert count_matched_points(origin, np.array([[0, 5]]), 5) == 1
    assert count_matched_points(origin, np.array([[0, 6]]), 5) == 0
    assert count_matched_points(origin, np.empty((0, 2), dtype=int), 5) == 0


def test_matching_with_empty_other_is_zero():
    a = boundary_map(square(10, 10, 2, 2, 4).astype(bool))
    empty = np.zeros_like(a)
    assert matched_pixels(a, empty, 3).sum() == 0
    assert matched_pixels_dilation(a, empty, 3).sum() == 0
    assert matched_pixels(empty, a, 3).sum() == 0


# ---------------------------------------------------------------- accumulator vs brute force

@pytest.mark.parametrize("seed", range(5))
def test_accumulator_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    k = 5
    acc = ContourFAccumulator(num_classes=k)
    totals = {c: np.zeros(4, dtype=int) for c in range(1, k)}
    seen = set()
    for _ in range(3):
        gt = random_blobs(rng, 20, 30, k)
        gt[rng.random(gt.shape) < 0.05] = 255
        pred = random_blobs(rng, 20, 30, k)
        acc.update(pred, gt)
        radius = tolerance_radius(20, 30)
        for c, cnt in brute_counts(pred, gt, k, radius).items():
            totals[c] += cnt
            seen.add(c)
    res = acc.result()
    fs = []
    for c in range(1, k):
        entry = res["per_class"][str(c)]
        if c not in seen:
            assert entry["F"] is None
            continue
        mp, tp, mg, tg = totals[c]
        assert (entry["matched_pred"], entry["total_pred"], entry["matched_gt"], entry["total_gt"]) == (mp, tp, mg, tg)
        p = mp / tp if tp else 1.0
        r = mg / tg if tg else 1.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        assert entry["P"] == pytest.approx(p) and entry["R"] == pytest.approx(r)
        assert entry["F"] == pytest.approx(f)
        fs.append(f)
    assert res["mean_F"] == pytest.approx(np.mean(fs))
    assert res["num_classes_in_mean"] == len(fs)


def test_brute_force_with_larger_radius():
    rng = np.random.default_rng(7)
    pred, gt = random_blobs(rng, 20, 30, 4), random_blobs(rng, 20, 30, 4)
    acc = ContourFAccumulator(num_classes=4, radius=3)
    acc.update(pred, gt)
    for c, (mp, tp, mg, tg) in brute_counts(pred, gt, 4, 3).items():
        e = acc.result()["per_class"][str(c)]
        assert (e["matched_pred"], e["total_pred"], e["matched_gt"], e["total_gt"]) == (mp, tp, mg, tg)


# ---------------------------------------------------------------- edge cases

def test_identical_masks_give_one():
    rng = np.random.default_rng(3)
    gt = random_blobs(rng, 40, 50, 6)
    acc = ContourFAccumulator(num_classes=6)
    acc.update(gt.copy(), gt)
    res = acc.result()
    for e in res["per_class"].values():
        if e["images"]:
            assert e["P"] == e["R"] == e["F"] == 1.0
    assert res["mean_F"] == 1.0


def test_disjoint_far_apart_gives_zero():
    gt = square(100, 100, 5, 5, 10)
    pred = square(100, 100, 80, 80, 10)
    acc = ContourFAccumulator(num_classes=2)  # r = ceil(1.13) = 2
    acc.update(pred, gt)
    e = acc.result()["per_class"]["1"]
    assert e["P"] == 0.0 and e["R"] == 0.0 and e["F"] == 0.0


def test_empty_prediction_vs_object():
    gt = square(30, 30, 5, 5, 8)
    acc = ContourFAccumulator(num_classes=2)
    acc.update(np.zeros_like(gt), gt)
    e = acc.result()["per_class"]["1"]
    assert e["total_pred"] == 0 and e["total_gt"] == 28
    assert e["P"] == 1.0 and e["R"] == 0.0 and e["F"] == 0.0


def test_object_vs_empty_ground_truth():
    pred = square(30, 30, 5, 5, 8)
    acc = ContourFAccumulator(num_classes=2)
    acc.update(pred, np.zeros_like(pred))
    e = acc.result()["per_class"]["1"]
    assert e["P"] == 0.0 and e["R"] == 1.0 and e["F"] == 0.0


def test_neither_has_boundary_gives_one():
    full = np.full((10, 12), 1, dtype=np.uint8)  # class fills the image: no boundary
    acc = ContourFAccumulator(num_classes=3)
    acc.update(full, full.copy())
    res = acc.result()
    e = res["per_class"]["1"]
    assert e["total_pred"] == e["total_gt"] == 0 and e["images"] == 1
    assert e["P"] == e["R"] == e["F"] == 1.0
    assert res["per_class"]["2"]["F"] is None
    assert res["mean_F"] == 1.0 and res["num_classes_in_mean"] == 1


def test_boundaryless_image_does_not_change_dataset_scores():
    gt = square(12, 12, 2, 2, 5)
    pred = square(12, 12, 2, 4, 5)
    acc = ContourFAccumulator(num_classes=2)
    acc.update(pred, gt)
    before = acc.result()["per_class"]["1"]["F"]
    full = np.ones((12, 12), dtype=np.uint8)
    acc.update(full, full)
    after = acc.result()["per_class"]["1"]
    assert after["F"] == pytest.approx(before) == pytest.approx(0.625)
    assert after["images"] == 2


def test_counts_add_over_images():
    a_gt, a_pred = square(12, 12, 2, 2, 5), square(12, 12, 2, 4, 5)  # 10/16 each way
    b = square(12, 12, 3, 3, 4)  # identical: 12/12 each way
    acc = ContourFAccumulator(num_classes=2)
    acc.update(a_pred, a_gt)
    acc.update(b, b)
    e = acc.result()["per_class"]["1"]
    assert (e["matched_pred"], e["total_pred"]) == (22, 28)
    assert e["P"] == pytest.approx(22 / 28) and e["F"] == pytest.approx(22 / 28)
    acc.reset()
    assert acc.result()["mean_F"] is None and acc.result()["num_images"] == 0


def test_ignore_is_background():
    # object with a 255 band around it (as in VOC): the class boundary is the object edge
    obj = square(30, 30, 10, 10, 8)
    gt = obj.copy()
    band = square(30, 30, 8, 8, 12).astype(bool) & (obj == 0)
    gt[band] = 255
    acc = ContourFAccumulator(num_classes=2)
    acc.update(obj, gt)
    assert acc.result()["per_class"]["1"]["F"] == 1.0

    # predicting an object over an ignore-only region is a spurious boundary
    gt = np.zeros((30, 30), dtype=np.uint8)
    gt[5:15, 5:15] = 255
    pred = square(30, 30, 5, 5, 10)
    acc = ContourFAccumulator(num_classes=2)
    acc.update(pred, gt)
    e = acc.result()["per_class"]["1"]
    assert e["total_gt"] == 0 and e["P"] == 0.0 and e["R"] == 1.0

    # 255 alone makes no class occur
    acc = ContourFAccumulator(num_classes=2)
    acc.update(np.zeros((30, 30), dtype=np.uint8), gt)
    assert acc.result()["per_class"]["1"]["F"] is None and acc.result()["mean_F"] is None


def test_background_and_absent_classes_are_not_scored():
    gt = square(20, 20, 2, 2, 5, value=2)
    acc = ContourFAccumulator(num_classes=4, class_names=["bg", "a", "b", "c"])
    acc.update(gt.copy(), gt)
    res = acc.result()
    assert set(res["per_class"]) == {"a", "b", "c"}
    assert res["per_class"]["a"]["F"] is None and res["per_class"]["c"]["F"] is None
    assert res["num_classes_in_mean"] == 1
    assert "present" in res["convention"]


def test_bad_input_raises():
    acc = ContourFAccumulator(num_classes=3)
    ok = np.zeros((4, 4), dtype=np.uint8)
    with pytest.raises(DataError, match="shape"):
        acc.update(ok, np.zeros((4, 5), dtype=np.uint8))
    with pytest.raises(DataError, match="img7"):
        acc.update(np.full((4, 4), 3, dtype=np.uint8), ok, name="img7")
    with pytest.raises(DataError, match="ground truth.*7"):
        acc.update(ok, np.full((4, 4), 7, dtype=np.uint8))
    with pytest.raises(DataError, match="integer"):
        acc.update(ok.astype(np.float32), ok)
    with pytest.raises(ConfigError):
        ContourFAccumulator(num_classes=3, class_names=["x"])
    with pytest.raises(ConfigError):
        ContourFAccumulator(num_classes=1)


def test_j_and_f():
    assert j_and_f(0.6, 0.8) == pytest.approx(0.7)
    assert j_and_f(0.0, 1.0) == pytest.approx(0.5)
    with pytest.raises(DataError, match="contour F"):
        j_and_f(0.5, 60.0)
    with pytest.raises(DataError):
        j_and_f(float("nan"), 0.5)


# ---------------------------------------------------------------- real VOC masks

def test_real_masks_fast_path_and_self_score(voc_root):
    from tagseg.utils.io import read_mask

    ids = (voc_root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[:4]
    acc = ContourFAccumulator(num_classes=21)
    shifted_acc = ContourFAccumulator(num_classes=21)
    for image_id in ids:
        gt = read_mask(voc_root / "SegmentationClassAug" / f"{image_id}.png", num_classes=21)
        pred = np.where(gt == 255, 0, gt).astype(np.uint8)
        acc.update(pred, gt, name=image_id)
        # distance transform and disk dilation agree on a real boundary pair
        shifted = np.roll(pred, 12, axis=1)
        for c in np.unique(pred[pred > 0]):
            a, b = boundary_map(shifted == c), boundary_map(pred == c)
            r = tolerance_radius(*gt.shape)
            np.testing.assert_array_equal(matched_pixels(a, b, r), matched_pixels_dilation(a, b, r))
        shifted_acc.update(shifted, gt, name=image_id)
        # the accumulator's sparse counts equal the distance-transform counts
        single = ContourFAccumulator(num_classes=21)
        single.update(shifted, gt, name=image_id)
        r = tolerance_radius(*gt.shape)
        for c in np.unique(np.concatenate([shifted[shifted > 0], pred[pred > 0]])):
            a, b = boundary_map(shifted == c), boundary_map(pred == c)
            e = single.result()["per_class"][str(c)]
            assert e["total_pred"] == a.sum() and e["total_gt"] == b.sum()
            assert e["matched_pred"] == matched_pixels(a, b, r).sum()
            assert e["matched_gt"] == matched_pixels(b, a, r).sum()
    res = acc.result()
    assert res["num_images"] == len(ids) and res["mean_F"] == 1.0
    # a 12-pixel horizontal shift (beyond r = 5) keeps horizontal edges near, loses vertical ones
    assert 0.0 < shifted_acc.result()["mean_F"] < 1.0


def test_predicted_255_counts_as_background_for_boundaries():
    from tagseg.metrics.contour import ContourFAccumulator

    gt = np.zeros((20, 20), dtype=np.uint8)
    gt[5:15, 5:15] = 1
    with_255 = gt.copy()
    with_255[0:3, 0:3] = 255
    a, b = ContourFAccumulator(2), ContourFAccumulator(2)
    a.update(with_255, gt)
    b.update(gt, gt)
    assert a.result()["mean_F"] == b.result()["mean_F"] == 1.0


# ---------------------------------------------------------------- DAVIS seg2bmap (default)

def test_seg2bmap_square_by_hand():
    from tagseg.metrics.contour import seg2bmap

    seg = np.zeros((4, 4), dtype=np.uint8)
    seg[1:3, 1:3] = 1
    # a pixel differs from its right, bottom or bottom-right neighbour (last row: right only,
    # last column: bottom only, corner never): outer pixels above/left, inner pixels right/below
    expected = np.array([[1, 1, 1, 0],
                         [1, 0, 1, 0],
                         [1, 1, 1, 0],
                         [0, 0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(seg2bmap(seg), expected)
    full = np.ones((3, 5), dtype=np.uint8)  # a region filling the image: the image edge is no boundary
    assert not seg2bmap(full).any()
    edge = np.zeros((3, 3), dtype=np.uint8)
    edge[:, 2] = 1  # the last column: its left neighbours (column 1) differ from their right
    # neighbour (last row included: it compares right), the region itself compares only downwards
    np.testing.assert_array_equal(seg2bmap(edge), [[0, 1, 0], [0, 1, 0], [0, 1, 0]])


def test_seg2bmap_accumulator_by_hand_and_the_old_mode_by_key():
    pred = np.zeros((4, 5), dtype=np.uint8)
    pred[1:3, 1:3] = 1  # 2x2 square
    gt = np.zeros((4, 5), dtype=np.uint8)
    gt[1:3, 1:4] = 1  # 2x3 rectangle
    # seg2bmap, radius 0: pred boundary (0,0) (0,1) (0,2) (1,0) (1,2) (2,0) (2,1) (2,2) = 8 pixels;
    # gt boundary (0,0..3) (1,0) (1,3) (2,0..3) = 10; shared: all of pred's but (1,2) = 7
    acc = _Accumulator(2, radius=0)
    acc.update(pred, gt)
    res = acc.result()
    cat = res["per_class"]["1"]
    assert (cat["matched_pred"], cat["total_pred"], cat["matched_gt"], cat["total_gt"]) == (7, 8, 7, 10)
    assert cat["P"] == pytest.approx(7 / 8) and cat["R"] == pytest.approx(7 / 10)
    assert res["mean_F"] == pytest.approx(7 / 9)
    assert res["boundary"] == "seg2bmap" and "seg2bmap" in res["convention"]
    # the earlier inner 4-neighbourhood rule: pred 4 pixels, gt all 6, every pred pixel on gt's boundary
    old = _Accumulator(2, radius=0, boundary="inner4")
    old.update(pred, gt)
    o = old.result()["per_class"]["1"]
    assert (o["matched_pred"], o["total_pred"], o["matched_gt"], o["total_gt"]) == (4, 4, 4, 6)
    assert old.result()["mean_F"] == pytest.approx(0.8)
    with pytest.raises(ConfigError, match="boundary"):
        _Accumulator(2, boundary="davis")
