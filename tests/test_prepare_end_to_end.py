"""A prepared mini tree (VOC 2012 + SBD, or COCO 2014) trains, makes pseudo-masks and scores."""

from __future__ import annotations

import json

import pytest

from prepare_fakes import EXPECTED_VOC, make_coco_source, make_voc_archives, make_voc_sources
from tagseg.cli import main
from tagseg.data.prepare.coco import prepare_coco
from tagseg.data.prepare.verify import ListExpectation, list_sha256
from tagseg.data.prepare.voc import prepare_voc

TINY = ["data.image_size=64", "data.num_workers=0", "model.encoder=test_resnet", "model.pretrained=false",
        "model.lstm_hidden=8", "method.et_crop_size=32", "train.epochs=1", "train.warmup_epochs=0",
        "train.batch_size=2", "pseudo.image_size=64"]


def _expect(lists: dict[str, list[str]]) -> dict[str, ListExpectation]:
    return {k: ListExpectation(len(v), list_sha256(v)) for k, v in lists.items()}


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["voc", "coco"])
def test_prepared_tree_trains_pseudo_and_scores(dataset, tmp_path, capsys):
    root = tmp_path / "prepared"
    if dataset == "voc":
        voc, sbd, _ = make_voc_sources(tmp_path / "src")
        prepare_voc(*make_voc_archives(tmp_path, voc, sbd), root, workers=2, expected=_expect(EXPECTED_VOC))
        config, split, classes = "tkpcl_voc", "train_aug", 21
    else:
        src, _ = make_coco_source(tmp_path / "coco", size=(64, 80))
        train = [f"COCO_train2014_{n:012d}" for n in (100, 101, 103)]
        val = [f"COCO_val2014_{n:012d}" for n in (200, 202)]
        prepare_coco(src, root, workers=2, expected=_expect({"train": train, "val": val}))
        config, split, classes = "tkpcl_coco", "train", 81
    run = tmp_path / "run"
    common = [f"data.root={root}", f"data.pseudo_split={split}", *TINY]
    assert main(["train", "--config", config, "--out", str(run), *common]) == 0
    assert main(["pseudo", "--run", str(run), "--shard", "0/2"]) == 0
    assert main(["pseudo", "--run", str(run), "--shard", "1/2"]) == 0
    n = len(list((run / "pseudo" / split / "masks").glob("*.png")))
    assert n == (5 if dataset == "voc" else 3)
    capsys.readouterr()
    assert main(["eval", "--pred", str(run / "pseudo" / split / "masks"), "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and ("toothbrush" in out if dataset == "coco" else "tvmonitor" in out)
    summary = json.loads((run / "pseudo" / split / "eval.json").read_text())
    assert summary["images"] == n and len(summary["iou"]) == classes and 0.0 <= summary["miou"] <= 1.0
    assert main(["report", str(run), "--samples", "2"]) == 0
    html = (run / "report.html").read_text()
    assert ("toothbrush" in html if dataset == "coco" else "tvmonitor" in html)
