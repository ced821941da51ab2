"""The refine section of the experiment config: official defaults, presets, refusals."""

import pytest

from tagseg.config import load_config, resolve_psa
from tagseg.errors import ConfigError


def test_defaults_are_the_official_ones():
    r = load_config("cam_voc").refine
    assert (r.par.dilations, r.par.num_iter, r.par.w1, r.par.w2, r.par.high_thres, r.par.low_thres) == \
        ([1, 2, 4, 8, 12, 24], 10, 0.3, 0.01, 0.7, 0.25)
    assert (r.irn.fg_thres, r.irn.bg_thres, r.irn.radius, r.irn.beta, r.irn.exp_times, r.irn.bg_thres_walk,
            r.irn.train_radius, r.irn.crop_size, r.irn.epochs) == (0.30, 0.05, 5, 10, 8, 0.25, 10, 512, 3)
    p = resolve_psa(r.psa)
    assert (p.low_alpha, p.high_alpha, p.walk_alpha, p.beta, p.logt, p.lr, p.seed_crf) == (4, 32, 16, 8, 8, 0.1, "score")


@pytest.mark.parametrize("preset,want", [("seam", (4, 24, 6, 6, 0.01, "label")), ("hfpl", (1, 24, 6, 6, 0.01, "score"))])
def test_seam_family_presets(preset, want):
    p = resolve_psa(load_config("cam_voc", [f"refine.psa.preset={preset}"]).refine.psa)
    assert (p.low_alpha, p.high_alpha, p.walk_alpha, p.logt, p.lr, p.seed_crf) == want


def test_an_explicit_key_wins_over_its_preset():
    p = resolve_psa(load_config("cam_voc", ["refine.psa.preset=seam", "refine.psa.logt=8"]).refine.psa)
    assert p.logt == 8 and p.high_alpha == 24


@pytest.mark.parametrize("override,key", [
    ("refine.method=crf", "refine.method"), ("refine.psa.preset=seem", "refine.psa.preset"),
    ("refine.irn.bg_thres=0.5", "refine.irn"), ("refine.par.dilations=[0,2]", "refine.par.dilations"),
    ("refine.crf=dense", "refine.crf"), ("refine.irn.exp_times=40", "refine.irn.exp_times"),
    ("refine.irn.wieght=1", "refine.irn.wieght")])
def test_bad_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("cam_voc", [override])
