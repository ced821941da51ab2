"""SEAM's losses and PCM against the official code (YudeWang/SEAM): golden values recorded by
benchmarks/golden/record_seam.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tagseg.methods.seam import seam_losses
from tagseg.models.seam_net import pcm_seed, pixel_correlation

from .conftest import assert_rel_close, assert_summary_close, case_tensors, load_golden

GOLDEN = load_golden("seam")
CASES = {c["name"]: c for c in GOLDEN["cases"]}
LOSS_CASES = sorted(n for n in CASES if not n.startswith("pcm"))


def test_golden_file_pins_the_official_commit():
    assert GOLDEN["source"]["repo"] == "YudeWang/SEAM"
    assert GOLDEN["source"]["commit"].startswith("3212261")


@pytest.mark.parametrize("name", LOSS_CASES)
def test_losses_match_official(name):
    case = CASES[name]
    x = case_tensors(case)
    maps = {k: x[k].clone().requires_grad_(True) for k in ("cam1", "cam_rv1", "cam2", "cam_rv2")}
    labels = torch.cat([torch.ones(x["label"].shape[0], 1), x["label"]], dim=1)
    assert list(maps["cam2"].shape[-2:]) == case["outputs"]["view2_size"]
    parts = seam_losses(maps["cam1"], maps["cam_rv1"], maps["cam2"], maps["cam_rv2"], labels)
    out = case["outputs"]
    for mine, theirs in (("cls1", "loss_cls1"), ("cls2", "loss_cls2"), ("rvmin1", "loss_rvmin1"),
                         ("rvmin2", "loss_rvmin2"), ("er", "loss_er"), ("ecr", "loss_ecr"), ("total", "loss")):
        assert_rel_close(parts[mine], out[theirs], what=mine)
    parts["total"].backward()
    for k, t in maps.items():
        assert_summary_close(t.grad, case["grads"][k], what=f"d loss / d {k}")


def test_pcm_matches_official():
    case = CASES["pcm_seed30"]
    x = case_tensors(case)
    seed = pcm_seed(x["cam"][:, 1:])  # the official seed overwrites the raw background channel
    assert_rel_close(seed, case["outputs"]["seed"], what="PCM seed")
    f9 = torch.nn.Conv2d(195, 192, 1, bias=False)
    with torch.no_grad():
        f9.weight.copy_(x["f9_weight"])
    f = x["f"].clone().requires_grad_(True)
    rv = pixel_correlation(seed, f9(f))
    assert_rel_close(rv, case["outputs"]["cam_rv"], what="PCM revised maps")
    probe = torch.from_numpy(np.random.default_rng(case["params"]["probe_seed"])
                             .standard_normal(tuple(rv.shape)).astype(np.float32))
    (rv * probe).sum().backward()
    assert_summary_close(f.grad, case["grads"]["f"], what="d / d f")
    assert_summary_close(f9.weight.grad, case["grads"]["f9_weight"], what="d / d f9")
