"""``train --check-data``: every image and mask decoded before training starts, the bad file named."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fixtures import make_voc
from tagseg.cli import main
from tagseg.data.check import CHECK_DATA_DEFAULT_MAX, check_split, should_check
from tagseg.errors import DataError

TINY = ["data.train_split=train", "data.image_size=64", "data.num_workers=0", "model.encoder=test_resnet",
        "model.pretrained=false", "model.lstm_hidden=8", "method.et_crop_size=32", "train.epochs=1",
        "train.warmup_epochs=0", "train.batch_size=2", "pseudo.image_size=64"]


def test_on_by_default_below_the_size_and_as_asked_otherwise():
    assert should_check(None, CHECK_DATA_DEFAULT_MAX) and not should_check(None, CHECK_DATA_DEFAULT_MAX + 1)
    assert should_check(True, 10**6) and not should_check(False, 3)


def _index(root):
    from tagseg.config import load_config
    from tagseg.data.build import build_index

    cfg = load_config("tkpcl_voc", [f"data.root={root}", *TINY])
    return build_index(cfg.data, "train")


def test_a_good_split_reads_every_image_and_mask(tmp_path):
    make_voc(tmp_path / "voc", n=4)
    assert check_split(_index(tmp_path / "voc"), progress=False) == 8


def test_a_truncated_image_is_named(tmp_path):
    ids = make_voc(tmp_path / "voc", n=4)
    bad = tmp_path / "voc" / "JPEGImages" / f"{ids[2]}.jpg"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    with pytest.raises(DataError, match=f"image {bad}"):
        check_split(_index(tmp_path / "voc"), progress=False)


def test_a_mask_of_another_size_is_named(tmp_path):
    ids = make_voc(tmp_path / "voc", n=4)
    mask = tmp_path / "voc" / "SegmentationClassAug" / f"{ids[1]}.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(mask)
    with pytest.raises(DataError, match=f"mask {mask} is 10×10 px but its image .* is 64×48 px"):
        check_split(_index(tmp_path / "voc"), progress=False)


def test_train_stops_before_the_first_epoch_naming_the_file(tmp_path, capsys):
    ids = make_voc(tmp_path / "voc", n=4)
    bad = tmp_path / "voc" / "JPEGImages" / f"{ids[3]}.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    run = tmp_path / "run"
    assert main(["train", "--config", "tkpcl_voc", "--out", str(run), f"data.root={tmp_path / 'voc'}", *TINY,
                 "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"tagseg train: error: cannot decode image {bad}")
    assert not (run / "checkpoints").exists() and not (run / "history.jsonl").exists()


def test_segment_train_checks_the_masks_it_trains_on(tmp_path, capsys):
    ids = make_voc(tmp_path / "voc", n=4)
    pseudo = tmp_path / "pseudo" / "masks"
    pseudo.mkdir(parents=True)
    for i in ids:
        (pseudo / f"{i}.png").write_bytes((tmp_path / "voc" / "SegmentationClassAug" / f"{i}.png").read_bytes())
    bad = pseudo / f"{ids[1]}.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    run = tmp_path / "seg"
    assert main(["segment", "train", "--config", "segment_demo", "--out", str(run), f"data.root={tmp_path / 'voc'}",
                 "data.dataset=voc", "data.train_split=train", f"segment.masks_dir={pseudo}", "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"tagseg segment train: error: cannot decode mask {bad}")
    assert not (run / "checkpoints").exists()
