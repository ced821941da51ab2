"""train.select = best: the epoch is chosen on a split that is not scored, and the run says which and why."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors import safe_open

from fixtures import make_voc
from tagseg.config import load_config
from tagseg.errors import ConfigError
from tagseg.metrics.scorer import Scorer, matrix_miou
from tagseg.engine.selection import scheduled
from tagseg.classify.trainer import Trainer

TINY = ["data.dataset=voc", "data.train_split=train", "data.pseudo_split=train", "data.val_split=val",
        "data.image_size=64", "data.num_workers=0", "model.encoder=test_resnet", "model.pretrained=false",
        "model.lstm_hidden=8", "method.et_weight=0", "train.batch_size=2", "train.warmup_epochs=0",
        "train.unfreeze_blocks=-1", "pseudo.image_size=64", "seed=7"]


def _voc(root):
    make_voc(root, n=4)
    lists = root / "ImageSets" / "Segmentation"
    shutil.copy(lists / "train.txt", lists / "val.txt")


def test_the_selection_score_by_hand():
    gt = np.array([[0, 0, 1], [1, 255, 2]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [1, 2, 0]], dtype=np.uint8)
    scorer = Scorer(3, contour=False, per_image=False)  # what the val pseudo-mask score uses
    scorer.update(pred, gt)
    m = scorer.confusion.matrix[:, :3]
    # gt 0: pred 0, 1; gt 1: pred 1, 1; gt 2: pred 0; the 255 pixel is left out
    assert m.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # IoU: class 0 = 1/(2+2-1) = 1/3, class 1 = 2/(2+3-2) = 2/3, class 2 = 0/(1+0-0) = 0
    assert matrix_miou(scorer.confusion.matrix) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert [scheduled(e, 2, 5) for e in range(5)] == [False, True, False, True, True]


def test_select_key_is_checked():
    with pytest.raises(ConfigError, match="train.select"):
        load_config("demo", ["train.select=first"])
    with pytest.raises(ConfigError, match="select_every"):
        load_config("demo", ["train.select_every=0"])


def test_best_epoch_is_chosen_on_val_and_recorded(tmp_path):
    _voc(tmp_path / "voc")
    cfg = load_config("tkpcl_voc", [f"data.root={tmp_path / 'voc'}", *TINY, "train.epochs=3", "train.select=best",
                                    "train.select_every=2", "train.select_images=3"])
    final = Trainer(cfg, tmp_path / "run", show_progress=False).fit()
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert ["selection_score" in h for h in history] == [False, True, True]  # every 2 epochs + the last
    sel = json.loads((tmp_path / "run" / "selection.json").read_text())
    scores = {int(k): v for k, v in sel["scores"].items()}
    assert set(scores) == {2, 3}
    assert sel["selected_epoch"] == max(scores, key=lambda e: (scores[e], -e))
    assert "first 3 images of 'val'" in sel["metric"] and "not the scored 'train'" in sel["metric"]
    with safe_open(str(final), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["selection"] == "best" and meta["selected_epoch"] == str(sel["selected_epoch"])


def test_segmentation_selects_on_the_training_masks(tmp_path):
    from tagseg.segment.config import load_segment_config
    from tagseg.segment.trainer import SegmentationTrainer

    _voc(tmp_path / "voc")
    cfg = load_segment_config("segment_demo", [
        f"data.root={tmp_path / 'voc'}", "data.dataset=voc", "data.train_split=train", "data.val_split=val",
        "data.num_workers=0", "model.encoder=test_resnet", "model.pretrained=false", "model.aspp_channels=16",
        "model.low_level_channels=8", "augment.crop_size=32", "train.batch_size=2", "train.epochs=2",
        "segment.masks_dir=gt", "seed=3", "train.select=best", "train.select_images=2"])
    SegmentationTrainer(cfg, tmp_path / "seg", show_progress=False).fit()
    sel = json.loads((tmp_path / "seg" / "selection.json").read_text())
    assert set(sel["scores"]) == {"1", "2"} and sel["selected_epoch"] in (1, 2)
    assert "gt training masks on the first 2 images of 'train'" in sel["metric"]
    assert all(0.0 <= v <= 1.0 for v in sel["scores"].values())


def test_both_hooks_score_in_eval_mode_and_restore_each_modules_mode():
    import torch
    from torch import nn

    from tagseg.engine.selection import evaluating

    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.BatchNorm1d(2))
    net.train()
    net[2].eval()  # a frozen norm inside a training network
    before = [m.training for m in net.modules()]
    with evaluating(net) as device:
        assert device == torch.device("cpu")
        assert not any(m.training for m in net.modules())
        assert not torch.is_grad_enabled()
    assert [m.training for m in net.modules()] == before
    with pytest.raises(RuntimeError), evaluating(net):
        raise RuntimeError("a failing score")
    assert [m.training for m in net.modules()] == before
