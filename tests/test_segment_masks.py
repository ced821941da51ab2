"""The segmentation stage trains on the CRF-refined pseudo-masks when they exist, and says which."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import make_voc
from tagseg.engine.distributed import DistInfo
from tagseg.errors import ConfigError, DataError
from tagseg.segment.config import load_segment_config
from tagseg.segment.data import choose_mask_folder
from tagseg.segment.trainer import segmentation_task

TINY = ["data.dataset=voc", "data.train_split=train", "data.val_split=val", "data.num_workers=0",
        "model.encoder=test_resnet", "model.pretrained=false", "model.aspp_channels=16",
        "model.low_level_channels=8", "augment.crop_size=32", "train.batch_size=2", "train.epochs=1", "seed=3"]


def _pseudo(root: Path, ids: list[str], voc: Path, crf: bool) -> Path:
    """A `tagseg pseudo` output folder: masks/ (and crf/masks/) holding the ground-truth masks."""
    for sub in (["masks"] + (["crf/masks"] if crf else [])):
        (root / sub).mkdir(parents=True)
        for i in ids:
            shutil.copy(voc / "SegmentationClassAug" / f"{i}.png", root / sub / f"{i}.png")
    return root


def test_choose_mask_folder(tmp_path):
    plain = tmp_path / "p" / "masks"
    plain.mkdir(parents=True)
    assert choose_mask_folder(str(plain)) == (str(plain), "plain")  # nothing refined: the plain ones
    with pytest.raises(DataError, match="crf/masks do not exist"):
        choose_mask_folder(str(plain), "crf")
    refined = tmp_path / "p" / "crf" / "masks"
    refined.mkdir(parents=True)
    assert choose_mask_folder(str(plain)) == (str(refined), "crf")
    assert choose_mask_folder(str(tmp_path / "p")) == (str(refined), "crf")  # the output folder itself
    assert choose_mask_folder(str(plain), "plain") == (str(plain), "plain")
    assert choose_mask_folder(str(refined), "auto") == (str(refined), "crf")
    assert choose_mask_folder("gt") == ("gt", "gt")
    with pytest.raises(ConfigError, match="segment.mask_kind"):
        load_segment_config("segment_demo", ["segment.mask_kind=refined"])


@pytest.mark.parametrize("kind,expected", [("auto", "crf"), ("plain", "plain")])
def test_the_run_records_which_masks_it_trained_on(tmp_path, capsys, kind, expected):
    voc = tmp_path / "voc"
    ids = make_voc(voc, n=2)
    pseudo = _pseudo(tmp_path / "pseudo", ids, voc, crf=True)
    cfg = load_segment_config("segment_demo", [f"data.root={voc}", *TINY, f"segment.masks_dir={pseudo / 'masks'}",
                                               f"segment.mask_kind={kind}"])
    task = segmentation_task(cfg)(DistInfo(), torch.device("cpu"))
    meta = task.metadata()
    assert meta["training_masks_kind"] == expected
    assert meta["training_masks"] == str(pseudo / ("crf/masks" if expected == "crf" else "masks"))
    assert f"({expected}; segment.mask_kind={kind})" in capsys.readouterr().out


def test_refined_masks_come_first(tmp_path):
    run = tmp_path / "run"
    plain = run / "pseudo" / "train" / "masks"
    crf = run / "pseudo" / "train" / "crf" / "masks"
    plain.mkdir(parents=True)
    crf.mkdir(parents=True)
    with pytest.raises(DataError, match="no refined masks"):
        choose_mask_folder(str(plain), "refine")
    par = run / "refine" / "par" / "train" / "masks"
    par.mkdir(parents=True)
    assert choose_mask_folder(str(plain)) == (str(par), "refined-par")
    irn = run / "refine" / "irn" / "train" / "masks"
    irn.mkdir(parents=True)
    (run / "refine" / "psa" / "train" / "masks").mkdir(parents=True)
    assert choose_mask_folder(str(plain)) == (str(irn), "refined-irn")          # IRN, then PSA, then PAR
    assert choose_mask_folder(str(plain), "refine") == (str(irn), "refined-irn")
    assert choose_mask_folder(str(plain), "crf") == (str(crf), "crf")
    assert choose_mask_folder(str(plain), "plain") == (str(plain), "plain")
    assert choose_mask_folder(str(par)) == (str(par), "refined-par")               # named directly
    # another split's refined masks are not used
    assert choose_mask_folder(str(run / "pseudo" / "val")) == (str(run / "pseudo" / "val"), "plain")


def test_confident_labels_are_chosen_only_when_asked(tmp_path):
    run = tmp_path / "run"
    plain = run / "pseudo" / "train" / "masks"
    plain.mkdir(parents=True)
    (run / "refine" / "irn" / "train" / "masks").mkdir(parents=True)
    with pytest.raises(DataError, match="no confident labels"):  # only PAR writes them
        choose_mask_folder(str(plain), "confident")
    par = run / "refine" / "par" / "train"
    (par / "masks").mkdir(parents=True)
    (par / "confident").mkdir()
    assert choose_mask_folder(str(plain), "confident") == (str(par / "confident"), "refined-par-confident")
    assert choose_mask_folder(str(plain.parent), "confident") == (str(par / "confident"), "refined-par-confident")
    assert choose_mask_folder(str(plain))[1] == "refined-irn"  # auto keeps full label maps
    assert choose_mask_folder(str(par / "confident")) == (str(par / "confident"), "refined-par-confident")
    assert choose_mask_folder(str(run / "pseudo" / "val"), "auto")[1] == "plain"  # another split: nothing


def test_training_on_confident_labels_leaves_unsure_pixels_out(tmp_path):
    """A run on PAR's confident labels trains on them (255 = unsure never enters the loss) and records so."""
    voc = tmp_path / "voc"
    ids = make_voc(voc, n=2)
    run = tmp_path / "run"
    (run / "pseudo" / "train" / "masks").mkdir(parents=True)
    confident = run / "refine" / "par" / "train" / "confident"
    confident.mkdir(parents=True)
    (confident.parent / "masks").mkdir()
    for i in ids:
        gt = np.array(Image.open(voc / "SegmentationClassAug" / f"{i}.png"))
        unsure = gt.copy()
        unsure[: gt.shape[0] // 2] = 255  # the top half unsure
        Image.fromarray(unsure).save(confident / f"{i}.png")
        Image.fromarray(gt).save(confident.parent / "masks" / f"{i}.png")
    cfg = load_segment_config("segment_demo", [f"data.root={voc}", *TINY,
                                               f"segment.masks_dir={run / 'pseudo' / 'train' / 'masks'}",
                                               "segment.mask_kind=confident"])
    task = segmentation_task(cfg)(DistInfo(), torch.device("cpu"))
    assert task.metadata()["training_masks_kind"] == "refined-par-confident"
    image, mask = task.dataset.load_pair(0)
    assert (mask[: mask.shape[0] // 2] == 255).all() and (mask != 255).any()
