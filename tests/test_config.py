"""Config loading, overrides and validation."""

import pytest

from tagseg.config import config_from_yaml, config_to_yaml, load_config, shipped_configs
from tagseg.errors import ConfigError


def test_shipped_configs_load():
    names = shipped_configs()
    for required in ("tkpcl_voc", "vitpcm_voc", "avgpool_voc", "demo"):
        assert required in names
    tk, pcm, avg = load_config("tkpcl_voc"), load_config("vitpcm_voc"), load_config("avgpool_voc")
    assert (tk.method.pooling, tk.method.topk, tk.method.pce_weight, tk.method.et_weight) == ("topk", 6, 0.01, 1.0)
    assert (pcm.method.pooling, pcm.method.pce_weight, pcm.method.et_weight) == ("max", 0.0, 1.0)
    # the paper's avg row is the same network with average pooling: L_ET stays on (issue 11, item 1)
    assert (avg.method.pooling, avg.method.pce_weight, avg.method.et_weight) == ("avg", 0.0, 1.0)
    assert tk.pseudo.image_size == 960 and tk.data.image_size == 384


def test_overrides_and_roundtrip():
    cfg = load_config("tkpcl_voc", ["method.topk=3", "train.epochs=2", "pseudo.scales=[1.0,0.5]"])
    assert cfg.method.topk == 3 and cfg.train.epochs == 2 and cfg.pseudo.scales == [1.0, 0.5]
    again = config_from_yaml(config_to_yaml(cfg))
    assert again == cfg


@pytest.mark.parametrize("override,match", [
    ("method.bogus=1", "bogus"),
    ("method.pooling=median", "pooling"),
    ("method.topk=0", "topk"),
    ("train.epochs=abc", "epochs"),
    ("train.warmup_epochs=99", "warmup_epochs"),
    ("nokeyvalue", "key=value"),
])
def test_invalid_configs_are_rejected(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tkpcl_voc", [override])


@pytest.mark.parametrize("override,match", [
    ("data.image_size=200", "image_size"),
    ("method.et_crop_size=24", "et_crop_size"),
])
def test_sizes_off_the_patch_grid_are_rejected(override, match):
    # the patch size is the model family's, so the family-aware loader owns these checks
    from tagseg.experiment import load_experiment

    with pytest.raises(ConfigError, match=match):
        load_experiment("tkpcl_voc", [override])


def test_the_family_patch_size_decides_which_image_sizes_fit():
    import dataclasses

    from tagseg.experiment import load_experiment
    from tagseg.methods.families import FAMILIES, get_family, register_family

    sizes = ["data.image_size=72", "pseudo.image_size=72", "method.et_weight=0"]
    register_family(dataclasses.replace(get_family("patch"), name="trial8", format="tagseg.trial8/1", patch_size=8))
    register_family(dataclasses.replace(get_family("patch"), name="trial16", format="tagseg.trial16/1", patch_size=16))
    try:
        cfg = load_experiment("tkpcl_voc", ["model.family=trial8", *sizes])
        assert (cfg.data.image_size, cfg.pseudo.image_size) == (72, 72)
        with pytest.raises(ConfigError, match=r"data.image_size=72: must be a multiple of 16 \(the patch size of "
                                              r"model.family='trial16'\)"):
            load_experiment("tkpcl_voc", ["model.family=trial16", *sizes])
    finally:
        FAMILIES.pop("trial8")
        FAMILIES.pop("trial16")


def test_unknown_config_name():
    with pytest.raises(ConfigError, match="shipped configs"):
        load_config("nope")


def test_experiment_checks_the_family_and_round_trips():
    from tagseg.experiment import experiment_from_yaml, load_experiment

    with pytest.raises(ConfigError, match=r"model.family='nope': choose one of \['cam', 'patch', 'seam'\]"):
        load_experiment("tkpcl_voc", ["model.family=nope"])
    cfg = load_experiment("cam_voc", ["addons.ppc.enabled=true"])
    assert experiment_from_yaml(config_to_yaml(cfg)) == cfg
    # the plain loader does not need the registries, so it leaves the family to load_experiment
    assert load_config("tkpcl_voc", ["model.family=nope"]).model.family == "nope"


def test_both_run_schemas_share_one_base():
    import dataclasses

    from tagseg.config import ExperimentConfig, RunConfig
    from tagseg.segment.config import SegmentExperimentConfig, load_segment_config

    shared = [f.name for f in dataclasses.fields(RunConfig)]
    assert shared == ["name", "seed", "device", "data"]
    for schema in (ExperimentConfig, SegmentExperimentConfig):
        assert issubclass(schema, RunConfig)
        assert [f.name for f in dataclasses.fields(schema)][:4] == shared
    assert load_config("tkpcl_voc").name != "segment" and load_segment_config("segment_demo").name == "segment_demo"
