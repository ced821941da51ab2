"""Defaults that follow the run: where ``predict`` writes when no ``--out`` is given."""

from __future__ import annotations

import numpy as np
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
