"""The command line: demo at a tiny size, and train + pseudo + eval on real VOC images."""

import json

import pytest

from tagseg.cli import main


@pytest.mark.slow
def test_demo_tiny(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path / "demo"), "data.synthetic_train=16", "data.synthetic_val=4",
                 "train.epochs=1", "train.batch_size=8", "model.encoder=test_resnet", "data.image_size=64",
                 "data.synthetic_size=64", "pseudo.image_size=64", "method.et_crop_size=32"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "tagseg pseudo-masks" in out and "chance: all background" in out and "mIoU" in out
    summary = json.loads((tmp_path / "demo" / "pseudo" / "train" / "eval.json").read_text())
    assert summary["images"] == 16 and 0.0 <= summary["miou"] <= 1.0
    assert (tmp_path / "demo" / "config.yaml").is_file()


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["train", "--config", "nope"]) == 2
    assert "unknown config 'nope'" in capsys.readouterr().err
    assert main(["train", "--config", "tkpcl_voc", f"data.root={tmp_path / 'missing'}", "--out",
                 str(tmp_path / "r")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["pseudo", "--run", str(tmp_path)]) == 2
    assert "config.yaml" in capsys.readouterr().err


@pytest.mark.slow
def test_train_pseudo_eval_on_real_voc(voc_root, tmp_path, capsys):
    run = tmp_path / "run"
    common = [f"data.root={voc_root}", "data.max_images=8", "data.image_size=64", "data.num_workers=0",
              "model.encoder=test_resnet", "model.pretrained=false", "model.lstm_hidden=8",
              "method.et_crop_size=32", "train.epochs=1", "train.warmup_epochs=0", "train.batch_size=4",
              "pseudo.image_size=64", "data.pseudo_split=val"]
    assert main(["train", "--config", "tkpcl_voc", "--out", str(run), *common]) == 0
    assert main(["pseudo", "--run", str(run), "pseudo.flip=true", "pseudo.scales=[1.0,1.5]"]) == 0
    masks = sorted((run / "pseudo" / "val" / "masks").glob("*.png"))
    assert len(masks) == 8
    assert main(["pseudo", "--run", str(run)]) == 0  # resumes: nothing left to do
    assert "0 written, 8 already done" in capsys.readouterr().out
    assert main(["eval", str(run / "pseudo" / "val" / "masks"), "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "background" in out
    summary = json.loads((run / "pseudo" / "val" / "eval.json").read_text())
    assert summary["images"] == 8 and len(summary["iou"]) == 21


@pytest.mark.slow
def test_pseudo_with_crf_and_workers_then_eval_several_runs(tmp_path, capsys):
    from fixtures import make_voc

    make_voc(tmp_path / "voc", n=4)
    run = tmp_path / "run"
    common = [f"data.root={tmp_path / 'voc'}", "data.dataset=voc", "data.train_split=train",
              "data.pseudo_split=train", "data.image_size=64", "data.num_workers=0", "model.encoder=test_resnet",
              "model.pretrained=false", "model.lstm_hidden=8", "method.et_crop_size=32", "train.epochs=1", "train.warmup_epochs=0",
              "train.batch_size=2", "pseudo.image_size=64"]
    assert main(["train", "--config", "tkpcl_voc", "--out", str(run), *common]) == 0
    assert main(["pseudo", "--run", str(run), "--crf", "torch", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 written" in out and "img/s" in out
    assert len(list((run / "pseudo" / "train" / "crf" / "masks").glob("*.png"))) == 4
    # single-process output is identical to the 2-worker output
    assert main(["pseudo", "--run", str(run), "--crf", "torch", "--out", str(tmp_path / "single")]) == 0
    from tagseg.utils.io import read_mask

    for p in (run / "pseudo" / "train" / "masks").glob("*.png"):
        assert (read_mask(p, 21) == read_mask(tmp_path / "single" / "masks" / p.name, 21)).all()
        assert (read_mask(run / "pseudo" / "train" / "crf" / "masks" / p.name, 21)
                == read_mask(tmp_path / "single" / "crf" / "masks" / p.name, 21)).all()
    capsys.readouterr()
    raw, crf = run / "pseudo" / "train" / "masks", run / "pseudo" / "train" / "crf" / "masks"
    assert main(["eval", str(raw), str(crf), "--run", str(run), "--out", str(tmp_path / "runs.json")]) == 0
    out = capsys.readouterr().out
    assert "contour F" in out and "J&F" in out and "over 2 runs" in out
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert set(runs["metrics"]) >= {"miou", "contour_f", "j_and_f"}
    assert len(runs["metrics"]["miou"]["values"]) == 2


def test_train_refuses_a_folder_with_checkpoints_unless_resuming(tmp_path, capsys):
    from fixtures import make_voc

    make_voc(tmp_path / "voc", n=2)
    args = ["train", "--config", "tkpcl_voc", "--out", str(tmp_path / "run"), f"data.root={tmp_path / 'voc'}",
            "data.train_split=train", "data.image_size=64", "data.num_workers=0", "model.encoder=test_resnet",
            "model.pretrained=false", "model.lstm_hidden=8", "method.et_crop_size=32", "train.epochs=1",
            "train.warmup_epochs=0", "train.batch_size=2"]
    assert main(args) == 0
    assert main(args) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
