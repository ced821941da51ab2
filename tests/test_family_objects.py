"""A model family is one registered object that carries its build, loss, validation and pseudo-mask
inference rule; the inference layer finds the rule through the family, not a second registry."""

from __future__ import annotations

import pytest

from tagseg.errors import ConfigError
from tagseg.inference.cam import cam_merged_probabilities
from tagseg.inference.patch import patch_merged_probabilities
from tagseg.inference.pseudo import merged_probs_for
from tagseg.methods.families import FAMILIES, get_family, register_family


def test_each_family_names_its_inference_rule():
    assert merged_probs_for("patch") is patch_merged_probabilities
    assert merged_probs_for("cam") is cam_merged_probabilities
    assert all(f.inference.startswith("tagseg.inference.") for f in FAMILIES.values())


def test_a_new_family_needs_only_its_own_registration():
    import dataclasses

    trial = dataclasses.replace(get_family("patch"), name="trial", format="tagseg.trial/1")
    register_family(trial)
    try:
        assert merged_probs_for("trial") is patch_merged_probabilities
        register_family(dataclasses.replace(trial, inference="os:system"))
        with pytest.raises(ConfigError, match="must be 'tagseg.inference.<module>:<function>'"):
            merged_probs_for("trial")
    finally:
        FAMILIES.pop("trial")
    with pytest.raises(ConfigError, match="'trial'.*known: \\['cam', 'patch', 'seam'\\]"):
        merged_probs_for("trial")


def test_cam_maps_is_declared_by_the_families_whose_masks_threshold_normalised_cams():
    """The background sweep and the refine stage's CAM seeds ask the family, not its name."""
    assert {name for name, fam in FAMILIES.items() if fam.cam_maps} == {"cam", "seam"}
    assert not get_family("patch").cam_maps
