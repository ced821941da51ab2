"""Which stage a config is for is read from its sections, not from its file name."""

from __future__ import annotations

from pathlib import Path

import pytest

from tagseg.cli import main
from tagseg.config import compose_yaml, config_to_yaml, is_segment_config, shipped_configs


@pytest.mark.parametrize("name", shipped_configs())
def test_shipped_configs_keep_their_stage(name):
    # every shipped segmentation config is named segment*, so the content agrees with the old name rule
    assert is_segment_config(name) == name.startswith("segment")


def _copy(name: str, path: Path) -> Path:
    path.write_text(config_to_yaml(compose_yaml(name)))
    return path


def test_a_segmentation_config_under_another_name(tmp_path, capsys):
    seg = _copy("segment_demo", tmp_path / "deeplab_on_masks.yaml")
    assert is_segment_config(str(seg))
    assert main(["configs", str(seg)]) == 0
    out = capsys.readouterr().out
    assert "segment:" in out and "inference:" in out
    assert main(["train", "--config", str(seg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "segmentation-stage config" in err and "tagseg segment train" in err
    assert not (tmp_path / "run").exists()


def test_a_classifier_config_named_segment_is_a_classifier_config(tmp_path, capsys):
    tags = _copy("demo", tmp_path / "segment_tags.yaml")
    assert not is_segment_config(str(tags))
    assert main(["configs", str(tags), "addons.ppc.wieght=1"]) == 2
    assert "addons.ppc.wieght: unknown key" in capsys.readouterr().err
    assert main(["configs", str(tags)]) == 0
    out = capsys.readouterr().out
    assert "method:" in out and "pseudo:" in out and "segment:" not in out
