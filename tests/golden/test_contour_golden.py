"""Contour F against the official implementations: the DAVIS toolkit's ``seg2bmap`` / per-image
``db_eval_boundary`` (``davis.json``) and HFPL's dataset-level ``contour_fscore.py`` (``hfpl_contour.json``),
both recorded by ``benchmarks/golden/record_contour.py``. The tests need only the JSON files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tagseg.metrics.contour import ContourFAccumulator, seg2bmap

from .inputs import checksum as _checksum, generate

HERE = Path(__file__).parent
DAVIS = json.loads((HERE / "davis.json").read_text())
HFPL = json.loads((HERE / "hfpl_contour.json").read_text())


def _draw(spec: dict) -> np.ndarray:
    x = generate(spec)  # the shared golden-input generator (tests/golden/inputs.py)
    assert _checksum(x) == spec["sha256"], "golden input regenerated differently from the recording"
    return x


def label_map(recorded: dict) -> np.ndarray:
    """The recorder's label map: argmax over K of repeated coarse scores + a weighted fine field."""
    specs, derive = recorded["specs"], recorded["derive"]
    f = derive["factor"]
    scores = np.kron(_draw(specs["coarse"]), np.ones((1, f, f), np.float32)) + \
        np.float32(derive["fine_weight"]) * _draw(specs["fine"])
    labels = scores.argmax(axis=0).astype(np.uint8)
    if derive["void_below"] > 0:
        labels[_draw(specs["void"]) < derive["void_below"]] = 255
    if "crop" in derive:
        labels = labels[: derive["crop"][0], : derive["crop"][1]]
    if "to_background" in derive:
        labels[labels == derive["to_background"]] = 0
    assert _checksum(labels) == derive["sha256"]
    return labels


def _single_image_f(pred: np.ndarray, gt: np.ndarray) -> float:
    acc = ContourFAccumulator(num_classes=2)
    acc.update(pred.astype(np.int64), gt.astype(np.int64))
    return acc.result()["per_class"]["1"]["F"]


def test_recorded_at_the_pinned_commits():
    assert DAVIS["source"]["repo"] == "davisvideochallenge/davis" and DAVIS["source"]["commit"].startswith("a44a351")
    assert HFPL["source"]["repo"] == "arvijj/hfpl" and HFPL["source"]["commit"].startswith("1038a68")


@pytest.mark.parametrize("case", [c for c in DAVIS["cases"] if c["name"].startswith("seg2bmap")],
                         ids=lambda c: c["name"])
def test_seg2bmap_and_per_image_f_match_davis(case):
    labels = label_map(case["inputs"]["labels"])
    out = case["outputs"]
    assert np.flatnonzero(seg2bmap(labels == 1)).tolist() == out["bmap_fg_indices"]
    assert np.flatnonzero(seg2bmap(labels == 2)).tolist() == out["bmap_gt2_indices"]
    f = _single_image_f(labels == 1, labels >= 1)
    assert f == pytest.approx(out["db_eval_boundary_F"], rel=1e-12)


def test_edge_cases_match_davis():
    out = next(c for c in DAVIS["cases"] if c["name"] == "edge_cases")["outputs"]
    empty = np.zeros((30, 30), np.uint8)
    square = empty.copy()
    square[5:20, 8:25] = 1
    assert _single_image_f(empty, square) == out["F_empty_pred"]
    assert _single_image_f(square, empty) == out["F_empty_gt"]
    assert _single_image_f(square, square) == out["F_same"]
    # neither has a boundary: DAVIS scores F = 1; tagseg's dataset accumulator leaves a class that
    # never occurs out of the mean (None) instead of counting a perfect score
    acc = ContourFAccumulator(num_classes=2)
    acc.update(empty.astype(np.int64), empty.astype(np.int64))
    assert out["F_both_empty"] == 1.0 and acc.result()["per_class"]["1"]["F"] is None


def _accumulate(case: dict) -> ContourFAccumulator:
    ids, k = case["params"]["ids"], case["params"]["num_classes"]
    acc = ContourFAccumulator(num_classes=k + 1, ratio=case["params"]["bound_th"])
    for image_id in ids:
        gt = label_map(case["inputs"][f"{image_id}_gt"])
        pred = label_map(case["inputs"][f"{image_id}_pred"])
        acc.update(pred.astype(np.int64), gt.astype(np.int64), image_id)
    return acc


@pytest.mark.parametrize("name", ["all_classes", "class_4_absent"])
def test_boundary_counts_match_hfpl_per_class(name):
    case = next(c for c in HFPL["cases"] if c["name"] == name)
    acc = _accumulate(case)
    k = case["params"]["num_classes"]
    totals = {c: np.zeros(4, dtype=np.int64) for c in range(1, k + 1)}
    for row in case["outputs"]["f_matches"]:
        # the script calls f_matches(ground truth, prediction): its "fg" is the ground truth
        totals[row["class"]] += [row["gt_matches"], row["n_gt"], row["fg_matches"], row["n_fg"]]
    for c in range(1, k + 1):
        mine = [acc.matched_pred[c], acc.total_pred[c], acc.matched_gt[c], acc.total_gt[c]]
        assert mine == totals[c].tolist(), f"class {c}"


def test_mean_f_matches_hfpl_when_every_class_occurs():
    case = next(c for c in HFPL["cases"] if c["name"] == "all_classes")
    result = _accumulate(case).result()
    assert result["num_classes_in_mean"] == case["params"]["num_classes"]
    # the script prints the mean as a percent with 3 decimals: +-5e-6 as a fraction
    assert abs(result["mean_F"] - case["outputs"]["mean_F"]) <= 5e-6


def test_mean_f_departs_from_hfpl_only_by_the_absent_class_convention():
    """HFPL averages over all K-1 classes and scores a class absent from both prediction and ground
    truth everywhere as F = 1; tagseg leaves such a class out of the mean (docs/CHOICES.md)."""
    case = next(c for c in HFPL["cases"] if c["name"] == "class_4_absent")
    result = _accumulate(case).result()
    k = case["params"]["num_classes"]
    assert result["per_class"][str(k)]["F"] is None and result["num_classes_in_mean"] == k - 1
    hfpl_rule = (result["mean_F"] * (k - 1) + 1.0) / k
    assert abs(hfpl_rule - case["outputs"]["mean_F"]) <= 5e-6
    assert abs(result["mean_F"] - case["outputs"]["mean_F"]) > 1e-3
