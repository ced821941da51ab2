"""Configs compose: ``defaults: [...]`` merges shipped parts or files beside the config, then its
own keys; the method recipes combined with a dataset part give the shipped per-dataset configs."""

from __future__ import annotations

import dataclasses

import pytest

from tagseg.config import load_config, shipped_configs, to_dict
from tagseg.errors import ConfigError


PARTS = {"voc": ["data.dataset=voc", "data.train_split=train_aug", "data.pseudo_split=train", "data.val_split=val"],
         "coco": ["data.dataset=coco", "data.train_split=train", "data.pseudo_split=train", "data.val_split=val"]}


@pytest.mark.parametrize("method", ["tkpcl", "vitpcm", "cam"])
def test_a_method_recipe_with_a_dataset_part_takes_the_part_s_data_keys(tmp_path, method):
    for recipe, dataset in ((f"{method}_voc", "coco"), (f"{method}_coco", "voc")):
        cfg_file = tmp_path / f"{method}_{dataset}.yaml"
        cfg_file.write_text(f"defaults: [{recipe}, data/{dataset}]\nname: {method}_{dataset}\n")
        composed = load_config(str(cfg_file))
        expected = load_config(recipe, [*PARTS[dataset], f"name={method}_{dataset}"])
        assert to_dict(composed) == to_dict(expected)
    assert "data/voc" not in shipped_configs() and f"{method}_coco" in shipped_configs()


def test_own_keys_and_overrides_win_over_the_defaults(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  epochs: 7\n  lr: 0.002\n")
    (tmp_path / "run.yaml").write_text("defaults: [demo, base.yaml]\ntrain:\n  epochs: 3\n")
    cfg = load_config(str(tmp_path / "run.yaml"), ["train.lr=0.003"])
    demo = load_config("demo")
    assert (cfg.train.epochs, cfg.train.lr) == (3, 0.003)
    assert cfg.method == demo.method and cfg.data.dataset == "synthetic"
    assert dataclasses.replace(cfg.train, epochs=demo.train.epochs, lr=demo.train.lr) == demo.train


@pytest.mark.parametrize("text,message", [
    ("defaults: demo\n", "defaults must be a list"),
    ("defaults: [nosuch/part]\n", "unknown config 'nosuch/part'"),
    ("defaults: [../../etc/passwd]\n", "is not a config name"),
    ("defaults: [/abs.yaml]\n", "must be a file in its own folder"),
    ("defaults: [../up.yaml]\n", "must be a file in its own folder"),
    ("defaults: [self.yaml]\n", "cycle"),
    ("defaults: [data/voc]\ntrain:\n  epochz: 1\n", "epochz"),
])
def test_malformed_defaults_are_refused_naming_the_problem(tmp_path, text, message):
    (tmp_path / "self.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(str(tmp_path / "self.yaml"))
