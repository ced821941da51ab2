"""Every verb applies each key=value it is given or refuses it, naming the key and the verb (exit 2)."""

from __future__ import annotations

import pytest

from tagseg.cli import main
from tagseg.config import VERB_APPLIES, check_verb_overrides, config_to_yaml, load_config
from tagseg.errors import ConfigError


def test_check_verb_overrides_names_key_and_verb():
    check_verb_overrides("pseudo", ["pseudo.flip=true", "data.root=/x", "device=cpu"])
    with pytest.raises(ConfigError, match=r"^model\.bn is not applied by `tagseg pseudo`"):
        check_verb_overrides("pseudo", ["data.root=/x", "model.bn=frozen"])
    with pytest.raises(ConfigError, match=r"pseudo\.flip is not applied by `tagseg eval`"):
        check_verb_overrides("eval", ["pseudo.flip=true"])
    check_verb_overrides("eval --sweep-bg", ["pseudo.scales=[1.0]"])
    with pytest.raises(ConfigError, match="dataset"):  # a prefix of a section name is not that section
        check_verb_overrides("pseudo", ["dataset=1"])
    with pytest.raises(ConfigError, match="key=value"):
        check_verb_overrides("pseudo", ["model.bn"])
    assert set(VERB_APPLIES) == {"pseudo", "eval", "eval --sweep-bg", "segment eval", "predict", "report", "refine"}
    check_verb_overrides("refine", ["refine.irn.beta=8", "pseudo.flip=true", "data.root=/x", "device=cpu"])
    with pytest.raises(ConfigError, match=r"^model\.bn is not applied by `tagseg refine`"):
        check_verb_overrides("refine", ["model.bn=frozen"])
    with pytest.raises(ConfigError, match=r"model\.head is not applied by `tagseg predict`: it takes only "
                                          r"inference\.key=value overrides"):
        check_verb_overrides("predict", ["inference.flip=true", "model.head=x"])


def test_configs_refuses_a_misspelt_addon_key(capsys):
    assert main(["configs", "tkpcl_voc", "addons.ppc.wieght=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tagseg configs: error: addons.ppc.wieght: unknown key") and len(err.splitlines()) == 1
    assert main(["configs", "cam_voc", "addons.ppc.enabled=true", "addons.ppc.cross_weight=0.5"]) == 0
    assert "cross_weight: 0.5" in capsys.readouterr().out


def _run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(config_to_yaml(load_config("demo", [f"data.root={tmp_path / 'data'}"])))
    return run


@pytest.mark.parametrize("argv,verb,key", [
    (["eval", "--pred", "p", "model.bn=frozen"], "eval", "model.bn"),
    (["eval", "--sweep-bg", "0.2", "method.topk=2"], "eval --sweep-bg", "method.topk"),
    (["pseudo", "cam.output_stride=8"], "pseudo", "cam.output_stride"),
])
def test_run_verbs_refuse_keys_they_would_ignore(tmp_path, capsys, argv, verb, key):
    run = _run_folder(tmp_path)
    assert main([argv[0], "--run", str(run), *argv[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{key} is not applied by `tagseg {verb}`" in err and len(err.splitlines()) == 1


def test_segment_eval_refuses_training_keys(tmp_path, capsys):
    from tagseg.segment.config import load_segment_config

    run = tmp_path / "seg"
    run.mkdir()
    (run / "config.yaml").write_text(config_to_yaml(load_segment_config("segment_demo", [])))
    assert main(["segment", "eval", "--run", str(run), "train.epochs=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.epochs is not applied by `tagseg segment eval`" in err
