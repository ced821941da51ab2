"""Shards' evaluation sums add up to the whole set's, exactly; bad shard files are named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tagseg.errors import DataError
from tagseg.metrics.contour import ContourFAccumulator
from tagseg.metrics.miou import ConfusionMatrix
from tagseg.metrics.shards import accumulators, eval_state, merge_states, read_state, shard_file_name

K = 4
NAMES = ["background", "a", "b", "c"]


def images(n: int = 7) -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        gt = np.zeros((24, 30), np.uint8)
        gt[4 + i % 5:16, 3:20 - i] = 1 + i % 3
        gt[0, :] = 255
        pred = np.roll(gt, i % 4 - 1, axis=1)
        pred[rng.random(gt.shape) < 0.05] = rng.integers(0, K)
        out.append((f"img_{i}", np.where(pred == 255, 0, pred).astype(np.uint8), gt))
    return out


def score(items, shard=(0, 1)):
    conf, cont, per = ConfusionMatrix(K), ContourFAccumulator(K, class_names=NAMES), []
    for image_id, pred, gt in items:
        m = conf.update(pred, gt, image_id)
        cont.update(pred, gt, image_id)
        iou = ConfusionMatrix(K)
        iou.matrix = m
        per.append({"id": image_id, "miou": float(np.nanmean(iou.iou()))})
    return conf, cont, per


def write(path: Path, items, shard) -> Path:
    conf, cont, per = score(items, shard)
    path.write_text(json.dumps({"class_names": NAMES, "state": eval_state(conf, cont, per, [i for i, _, _ in items],
                                                                          shard)}))
    return path


def test_merged_shards_equal_the_whole_set_to_the_last_digit(tmp_path):
    data = images(7)
    whole_conf, whole_cont, whole_per = score(data)
    n = 3
    files = [write(tmp_path / shard_file_name((i, n)), data[i::n], (i, n)) for i in (2, 0, 1)]  # any order
    merged = merge_states([read_state(f) for f in files])
    conf, cont = accumulators(merged)
    assert conf.summary(NAMES) == whole_conf.summary(NAMES)
    assert cont.result() == whole_cont.result()
    assert merged["per_image"] == whole_per and merged["ids"] == [i for i, _, _ in data]
    assert whole_cont.result()["mean_F"] is not None and 0 < whole_conf.summary(NAMES)["miou"] < 1


def test_shard_file_names():
    assert shard_file_name((0, 1)) == "eval.json" and shard_file_name((3, 8)) == "eval.shard-3-of-8.json"


def test_merge_refuses_missing_duplicate_and_foreign_shards(tmp_path):
    data = images(6)
    s0 = read_state(write(tmp_path / "s0.json", data[0::2], (0, 2)))
    s1 = read_state(write(tmp_path / "s1.json", data[1::2], (1, 2)))
    with pytest.raises(DataError, match=r"missing shard\(s\) 1/2 of 2"):
        merge_states([s0])
    with pytest.raises(DataError, match=r"shard 0/2 given twice"):
        merge_states([s0, s0, s1])
    other = read_state(write(tmp_path / "t.json", data[0::3], (0, 3)))
    with pytest.raises(DataError, match=r"one of 2: merge the shards of one split"):
        merge_states([s0, other])
    overlap = read_state(write(tmp_path / "o.json", data[0:3], (1, 2)))
    with pytest.raises(DataError, match=r"image img_0 is scored by both"):
        merge_states([s0, overlap])


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("state"), "holds no mergeable evaluation state"),
    (lambda d: d["state"].__setitem__("confusion", [[0] * K] * K), r"confusion matrix has shape \(4, 4\)"),
    (lambda d: d["state"]["confusion"][0].append(1), "confusion matrix is not a table of numbers"),
    (lambda d: d["state"]["confusion"][0].__setitem__(0, -3), "non-negative integer counts"),
    (lambda d: d["state"]["contour"].__setitem__("total_gt", [0.5] * K), "contour total_gt must hold"),
    (lambda d: d["state"].__setitem__("shard", [2, 2]), r"shard \[2, 2\] is not \[i, n\]"),
])
def test_malformed_shard_files_are_named(tmp_path, edit, message):
    path = write(tmp_path / "bad.json", images(2), (0, 1))
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=message) as info:
        read_state(path)
    assert str(path) in str(info.value)
