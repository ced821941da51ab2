"""tagseg's PAR against numbers recorded from ToCo's official code
(benchmarks/golden/record_toco.py)."""

import numpy as np

from tagseg.refine.par import par, par_seed_labels

from .conftest import assert_rel_close, case_tensors, golden_case


def test_par_default_equals_official():
    case = golden_case("toco", "par_default_20x24")
    t = case_tensors(case)
    out = par(t["image"], t["masks"], case["params"]["dilations"], case["params"]["num_iter"])
    assert_rel_close(out[0], case["outputs"]["refined"], what="par_default")


def test_par_small_equals_official():
    case = golden_case("toco", "par_small_13x17")
    t = case_tensors(case)
    out = par(t["image"], t["masks"], case["params"]["dilations"], case["params"]["num_iter"])
    assert_rel_close(out[0], case["outputs"]["refined"], what="par_small")


def test_two_threshold_seed_labels_equal_official():
    case = golden_case("toco", "refine_cams_with_bkg_v2")
    t = case_tensors(case)
    present = case["params"]["present"]
    image = t["image"][0].permute(1, 2, 0).numpy()
    scores = t["cams"][0, present].numpy()
    got = par_seed_labels(image, scores, np.array(present) + 1, case["params"]["high_thre"],
                          case["params"]["low_thre"], case["params"]["down_scale"])
    want = np.asarray(case["outputs"]["label"])
    assert (got == want).all(), f"{int((got != want).sum())} of {want.size} pixels differ"
