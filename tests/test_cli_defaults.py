"""Defaults that follow the run: where ``predict`` writes when no ``--out`` is given."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tagseg.cli import main
from test_segmentation import _saved_model


def test_predict_writes_beside_the_model_not_into_the_current_folder(tmp_path, monkeypatch, capsys):
    run = tmp_path / "runs" / "seg"
    run.mkdir(parents=True)
    _saved_model(run / "model.safetensors")
    images = tmp_path / "photos"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(images / "a.jpg")
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["predict", str(images), "--model", str(run), "--threads", "1"]) == 0
    out = run / "predict" / "photos"
    assert (out / "masks" / "a.png").is_file() and (out / "predictions.json").is_file()
    assert str(out / "masks") in capsys.readouterr().out
    assert list(cwd.iterdir()) == []
    # one image file: named after the file; the model given as its file
    assert main(["predict", str(images / "a.jpg"), "--model", str(run / "model.safetensors"), "--threads", "1"]) == 0
    assert (run / "predict" / "a" / "masks" / "a.png").is_file()
    assert list(cwd.iterdir()) == []


@pytest.fixture(scope="module")
def cam_run(tmp_path_factory):
    """A CAM run trained at 64 px on 4 VOC-layout images, without setting pseudo.image_size."""
    from fixtures import make_voc

    root = tmp_path_factory.mktemp("camrun")
    make_voc(root / "voc", n=4)
    run = root / "run"
    assert main(["train", "--config", "cam_voc", "--out", str(run), f"data.root={root / 'voc'}",
                 "data.train_split=train", "data.image_size=64", "data.num_workers=0", "model.encoder=test_resnet",
                 "model.pretrained=false", "train.epochs=1", "train.warmup_epochs=0", "train.batch_size=2",
                 "--threads", "1"]) == 0
    return run


@pytest.mark.slow
def test_pseudo_size_follows_the_training_size_unless_set(cam_run, capsys):
    from tagseg.config import load_config

    assert load_config(str(cam_run / "config.yaml")).pseudo.image_size == 64
    assert load_config("cam_voc", ["data.image_size=128"]).pseudo.image_size == 128
    assert load_config("cam_voc", ["data.image_size=128", "pseudo.image_size=320"]).pseudo.image_size == 320
    capsys.readouterr()
    assert main(["pseudo", "--run", str(cam_run), "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert "4 written" in captured.out and "note:" not in captured.err  # 4 scales + flip at 64 px: 15×


@pytest.mark.slow
def test_pseudo_notes_a_cost_far_above_training(cam_run, tmp_path, capsys):
    assert main(["pseudo", "--run", str(cam_run), "--threads", "1", "--out", str(tmp_path / "p"),
                 "pseudo.image_size=256", "data.max_images=1"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == ["note: pseudo runs each image at 256 px × 4 scales (1, 0.5, 1.5, 2) + flip (largest 512 px, "
                     "8.0× the training size 64 px): 240× the pixels of a training image; pseudo.image_size, "
                     "pseudo.scales and pseudo.flip lower it"]


@pytest.mark.slow
def test_segment_train_resume_on_a_tag_classifier_run_says_what_the_folder_is(cam_run, capsys):
    assert main(["segment", "train", "--config", "segment_demo", "--out", str(cam_run), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"tagseg segment train: error: {cam_run} is a tag-classifier run (made by `tagseg train`), "
                   f"not a segmentation run: cannot resume it here; use `tagseg pseudo --run {cam_run}`, "
                   f"or another --out")
    assert main(["segment", "eval", "--run", str(cam_run)]) == 2
    assert "is a tag-classifier run" in capsys.readouterr().err


def test_train_resume_on_a_segmentation_run_says_what_the_folder_is(tmp_path, capsys):
    from tagseg.config import config_to_yaml
    from tagseg.segment.config import load_segment_config

    run = tmp_path / "seg"
    run.mkdir()
    (run / "config.yaml").write_text(config_to_yaml(load_segment_config("segment_demo")))
    for argv in (["train", "--config", "demo", "--out", str(run), "--resume"], ["pseudo", "--run", str(run)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{run} is a segmentation run (made by `tagseg segment train`)" in err[0]
    assert main(["train", "--config", "demo", "--out", str(run)]) == 2
    assert "cannot train into it here" in capsys.readouterr().err
