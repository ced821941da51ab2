"""benchmarks/reference_voc.py end to end at a tiny size on real VOC images: choices made on val."""

from __future__ import annotations

import json

import pytest

from conftest import load_benchmark


def test_inference_setting_strings():
    ref = load_benchmark("reference_voc")
    args = ref.argparse.Namespace(ms_scales=[0.5, 1.0])
    single, multi = ref.inference_setting("320", args), ref.inference_setting("448ms", args)
    assert (single.image_size, single.scales, single.flip) == (320, [1.0], False)
    assert (multi.image_size, multi.scales, multi.flip) == (448, [0.5, 1.0], True)


@pytest.mark.slow
def test_reference_runs_choose_on_val_and_score_train_aug(voc_root, tmp_path):
    ref = load_benchmark("reference_voc")
    work = tmp_path / "ref"
    argv = ["--voc", str(voc_root), "--work", str(work), "--max-images", "4", "--cam-size", "64", "--size", "64",
            "--epochs", "2", "--warmup", "1", "--cam-epochs", "2", "--select-images", "2", "--seeds", "0", "1",
            "--ordering-seeds", "0", "--crf-images", "2", "--cam-infer", "64", "64ms", "--patch-infer", "64",
            "--variants", "cam", "topk+pce", "avg"]
    assert ref.main(argv) == 0
    summary = json.loads((work / "summary-cam+topk+pce+avg.json").read_text())
    records = summary["records"]
    assert [len(records[k]) for k in ("cam", "topk+pce", "avg")] == [2, 2, 1]
    cam_val = summary["notes"]["infer_cam_val"]
    assert summary["inference"]["cam"] == max(cam_val, key=cam_val.get)  # chosen on val
    for rec in records["cam"]:
        assert rec["train_aug"]["images"] == 4 and rec["val"]["split"] == "val"
        val = rec["val"]["miou"]
        assert rec["bg_threshold"] == float(max(val, key=val.get))  # threshold from val only
        assert list(rec["train_aug"]["miou"]) == [str(rec["bg_threshold"])]
    first = records["topk+pce"][0]
    assert first["crf"]["train_aug"]["images"] == 2 and first["crf"]["val"]["images"] == 2
    assert first["train_aug"]["images"] == 4 and "crf" not in records["topk+pce"][1]
    selection = json.loads((work / "cam-adapt-seed0" / "selection.json").read_text())
    assert selection["metric"]  # train.select=best recorded its choice
    assert "| CAM (GAP, soft-margin) | 2 |" in summary["table"]
