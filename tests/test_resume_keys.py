"""Resume compares the keys each task declares: a key added after a run was written never stops
that run from resuming, and settings outside the declared sections may change."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import tagseg.classify.trainer as trainer_module
from fixtures import make_voc
from tagseg.config import load_config
from tagseg.engine.resume import check_resumable
from tagseg.errors import TrainingError
from tagseg.classify.trainer import RESUME_KEYS, Trainer

TINY = [
    "data.dataset=voc", "data.train_split=train", "data.pseudo_split=train", "data.image_size=64",
    "data.num_workers=0", "model.encoder=test_resnet", "model.pretrained=false", "model.lstm_hidden=8",
    "method.et_crop_size=32", "method.pce_threshold=0.3", "train.batch_size=2", "train.epochs=2", "train.cpu_threads=1",
    "train.warmup_epochs=1", "train.unfreeze_blocks=1", "pseudo.image_size=64", "seed=7",
]


def test_only_declared_keys_present_on_both_sides_are_compared(tmp_path):
    saved = {"seed": 1, "model": {"bn": "adapt"}, "pseudo": {"flip": False}}
    # a key the saved run predates, and a section outside the declared ones, are not compared
    check_resumable(saved, {"seed": 1, "model": {"bn": "adapt", "new_key": 3}, "pseudo": {"flip": True}},
                    tmp_path, matter=("seed", "model"))
    with pytest.raises(TrainingError, match=r"model.bn: 'adapt' -> 'train'"):
        check_resumable(saved, {"seed": 1, "model": {"bn": "train"}}, tmp_path, matter=("seed", "model"))
    with pytest.raises(TrainingError, match=r"seed: 1 -> 2"):  # without a list every shared key counts
        check_resumable(saved, {"seed": 2, "model": {"bn": "adapt"}}, tmp_path)
    assert "pseudo" not in RESUME_KEYS and "model" in RESUME_KEYS


def test_a_run_written_before_a_new_key_resumes_exactly(tmp_path, monkeypatch):
    make_voc(tmp_path / "voc", n=4)
    cfg = load_config("tkpcl_voc", [f"data.root={tmp_path / 'voc'}", *TINY])
    full = Trainer(cfg, tmp_path / "full", show_progress=False).fit()
    Trainer(cfg, tmp_path / "split", show_progress=False).fit(stop_after_epoch=1)

    # the code gains a new model key (its default keeps the old behaviour) after the run was written
    plain_to_dict = trainer_module.to_dict

    def with_new_key(c):
        d = plain_to_dict(c)
        d["model"]["added_later"] = "default"
        d["train"]["also_added"] = 0
        return d

    monkeypatch.setattr(trainer_module, "to_dict", with_new_key)
    cfg2 = load_config("tkpcl_voc", [f"data.root={tmp_path / 'voc'}", *TINY, "pseudo.flip=true"])
    resumed = Trainer(cfg2, tmp_path / "split", resume=True, show_progress=False).fit()
    a, b = load_file(str(full)), load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
