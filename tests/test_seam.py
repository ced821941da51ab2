"""SEAM (methods.seam, models.seam_net): hand-computed values of each loss and of the PCM."""

from __future__ import annotations

import pytest
import torch

from tagseg.methods.seam import adaptive_min_pooling_loss, max_norm, max_onehot, seam_losses
from tagseg.models.seam_net import pcm_seed, pixel_correlation

E = 1e-5


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_max_norm_by_hand():
    p = _t([[[[0.0, 1.0, 3.0, -2.0]]]])
    expected = _t([[[[0.0, (1 - E) / (3 + E), (3 - E) / (3 + E), 0.0]]]])
    assert torch.allclose(max_norm(p), expected, atol=1e-7)


def test_adaptive_min_pooling_by_hand():
    # per-pixel channel maxima 0.2, 0.5, 2, 3; k = 4 // 4 = 1 -> the smallest, 0.2
    x = _t([[[[0.2, 0.5], [2.0, 3.0]], [[0.1, -1.0], [0.0, 0.0]]]])
    assert adaptive_min_pooling_loss(x).item() == pytest.approx(0.2)
    # a negative minimum is cut by the ReLU
    assert adaptive_min_pooling_loss(x - 1.0).item() == 0.0


def test_max_onehot_keeps_ties_and_background():
    x = _t([[[[0.9]], [[0.2]], [[0.7]], [[0.7]]]])
    assert max_onehot(x).flatten().tolist() == pytest.approx([0.9, 0.0, 0.7, 0.7])
    assert x.flatten().tolist() == pytest.approx([0.9, 0.2, 0.7, 0.7])  # the input is left alone


def test_er_and_ecr_by_hand():
    labels = _t([[1.0, 1.0]])
    zeros = torch.zeros(1, 1, 2, 2)
    cam1 = torch.cat([zeros, _t([[[[0.0, 1.0], [2.0, 4.0]]]])], 1)  # max-norm ~ 0, .25, .5, 1
    cam2 = torch.cat([zeros, _t([[[[0.0, 0.0], [0.0, 4.0]]]])], 1)  # max-norm ~ 0, 0, 0, 1
    # view 1's revised maps equal view 2's one-hot target (bg 1 − fg), view 2's revised maps are 0
    cam_rv1 = torch.cat([_t([[[[1.0, 1.0], [1.0, 0.0]]]]), _t([[[[0.0, 0.0], [0.0, 1.0]]]])], 1)
    cam_rv2 = torch.zeros(1, 2, 2, 2)
    parts = seam_losses(cam1, cam_rv1, cam2, cam_rv2, labels)
    assert parts["er"].item() == pytest.approx((0.25 + 0.5) / 4, abs=1e-4)
    # ECR2: |target − 0| over 2·4 entries = bg 1, .75, .5, 0 and fg 0, .25, .5, 1; top 20 % = int(1.6) = 1
    # entry: 1. ECR1: |rv1 − target| ~ 2e-5 (max-norm's eps)
    assert parts["ecr"].item() == pytest.approx(1.0, abs=1e-4)
    # rvmin: revised fg · label, pixel maxima 0, 0, 0, 1 (view 1) -> smallest 0; view 2 all 0
    assert parts["rvmin1"].item() == 0.0 and parts["rvmin2"].item() == 0.0
    total = (parts["cls1"] + parts["cls2"]) / 2 + parts["er"] + parts["ecr"]
    assert parts["total"].item() == pytest.approx(total.item(), rel=1e-6)


def test_er_resizes_view1_to_view2():
    labels = _t([[1.0, 1.0]])
    cam1 = torch.rand(1, 2, 8, 8)
    cam2 = torch.rand(1, 2, 4, 4)
    parts = seam_losses(cam1, cam1.clone(), cam2, cam2.clone(), labels)
    assert torch.isfinite(parts["total"])
    with pytest.raises(ValueError, match="pairs per view"):
        seam_losses(cam1, cam2, cam2, cam2, labels)


def test_pcm_seed_by_hand():
    cams = _t([[[[2.0, 1.0]], [[1.0, 4.0]]]])  # two classes, two pixels
    seed = pcm_seed(cams)
    # class 1: (2 − e)/(2 + e), (1 − e)/(2 + e); class 2: (1 − e)/(4 + e), (4 − e)/(4 + e); non-maxima zeroed
    top = [(2 - E) / (2 + E), (4 - E) / (4 + E)]
    expected = _t([[[[1 - top[0], 1 - top[1]]], [[top[0], 0.0]], [[0.0, top[1]]]]])
    assert torch.allclose(seed, expected, atol=1e-7)
    assert not seed.requires_grad


def test_pixel_correlation_by_hand():
    seed = _t([[[[1.0, 0.0]], [[0.0, 3.0]]]])
    orthogonal = _t([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # A diagonal: each pixel keeps its seed
    a = 1 / (1 + E) ** 2  # fᵢ·fᵢ after dividing by (norm + e); the column sum is a, then a / (a + e)
    out = pixel_correlation(seed, orthogonal)
    assert torch.allclose(out, seed * a / (a + E), atol=1e-7)
    same = _t([[[[1.0, 1.0]], [[0.0, 0.0]]]])  # A = all ones / 2: each pixel gets the seed's mean
    out = pixel_correlation(seed, same)
    assert torch.allclose(out, _t([[[[0.5, 0.5]], [[1.5, 1.5]]]]), atol=1e-4)
