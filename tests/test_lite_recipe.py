"""The README's Lite recipe on the shipped VOC configs: local weights imply no hub download, a
missing split list is named with the lists that exist, data-loader workers fit the cores."""

from __future__ import annotations

import pytest

from fixtures import make_voc
from tagseg.config import load_config
from tagseg.data.voc import read_voc
from tagseg.engine import threads
from tagseg.errors import DataError
from tagseg.experiment import load_experiment


@pytest.mark.parametrize("name", ["cam_voc", "tkpcl_voc"])
def test_lite_weights_imply_no_hub_download(name):
    cfg = load_experiment(name, ["model.encoder=tf_efficientnet_lite0", "model.weights=lite"])
    assert cfg.model.weights == "lite" and cfg.model.pretrained is False
    assert load_config(name).model.pretrained is True  # hub weights stay the default without a local file


def test_missing_split_list_names_the_file_and_the_lists_there(tmp_path):
    make_voc(tmp_path / "voc", n=2)
    lists = tmp_path / "voc" / "ImageSets" / "Segmentation"
    present = sorted(p.stem for p in lists.glob("*.txt"))
    with pytest.raises(DataError) as err:
        read_voc(tmp_path / "voc", "no_such_split")
    msg = str(err.value)
    assert "no_such_split.txt" in msg and all(name in msg for name in present) and "data.pseudo_split" in msg


def test_loader_workers_leave_a_core_for_compute(monkeypatch, capsys):
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    assert threads.loader_workers(4) == 1
    assert "capped" in capsys.readouterr().out
    assert threads.loader_workers(1) == 1 and threads.loader_workers(0) == 0
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 16)
    assert threads.loader_workers(4) == 4
