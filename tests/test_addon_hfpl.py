"""Tests of the HFPL add-on: importance sampling (ISL) and the feature similarity loss (FSL)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tagseg.addons.hfpl import (
    HFPLConfig,
    feature_similarity_loss,
    feature_similarity_loss_dense,
    gap_bce_loss,
    hfpl_classification_loss,
    hfpl_loss,
    fsl_normalised_maps,
    importance_pooling,
    importance_sample,
    importance_sampling_loss,
)
from tagseg.errors import ConfigError, TagsegError


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lam": -0.1},
        {"lam": 1.5},
        {"n_samples": 0},
        {"sigma": 0.0},
        {"sigma": -1.0},
        {"mu": float("nan")},
        {"fsl_weight": -1.0},
        {"block": 0},
        {"window": 0.0},
    ],
)
def test_config_rejects_nonsense(kwargs):
    with pytest.raises(ConfigError):
        HFPLConfig(**kwargs)


def test_config_defaults_follow_spec():
    cfg = HFPLConfig()
    assert (cfg.lam, cfg.n_samples, cfg.sigma, cfg.mu) == (0.2, 10, 5.0, 2.5)


# ----------------------------------------------------------------------------- ISL


def test_isl_constant_map_by_hand():
    # every position has s = 0 -> b = 0.5 + 1e-5 whatever is sampled
    scores = torch.zeros(2, 3, 4, 4)
    labels = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 1.0]])
    out = importance_sampling_loss(scores, labels, n_samples=7, generator=torch.Generator().manual_seed(0))
    b = 0.5 + 1e-5
    pos, neg = -math.log(b), -math.log(1 - b)
    expected = (pos + neg + neg + neg + pos + pos) / 6
    assert out.item() == pytest.approx(expected, rel=1e-6)


def test_isl_gradient_flows_only_through_sampled_values():
    logits = torch.tensor([[[[2.0, -1.0, 0.5, 3.0]], [[-2.0, 1.0, 0.0, -0.5]]]], requires_grad=True)
    labels = torch.tensor([[1.0, 1.0, 0.0]])
    n = 6
    out = importance_sampling_loss(logits, labels, n_samples=n, generator=torch.Generator().manual_seed(3))
    out.backward()
    # redraw the same positions independently and differentiate by hand
    b = torch.sigmoid(logits.detach()) + 1e-5
    idx = torch.multinomial(b.reshape(2, 4), n, replacement=True, generator=torch.Generator().manual_seed(3))
    expected = torch.zeros(2, 4)
    for c, t in ((0, 1.0), (1, 0.0)):
        for i in idx[c].tolist():
            s = logits[0, c, 0, i].item()
            sig = _sigmoid(s)
            bv = sig + 1e-5
            dbce_db = -t / bv + (1 - t) / (1 - bv)
            expected[c, i] += dbce_db * sig * (1 - sig) / (2 * n)
    torch.testing.assert_close(logits.grad.reshape(2, 4), expected, rtol=1e-5, atol=1e-7)
    never = torch.ones(2, 4, dtype=torch.bool)
    for c in range(2):
        never[c, idx[c]] = False
    assert (logits.grad.reshape(2, 4)[never] == 0).all()


def test_importance_sample_frequencies_follow_weights():
    b = torch.tensor([[[[0.1, 0.3, 0.6]]]])
    draws = importance_sample(b, 20000, torch.Generator().manual_seed(0))
    freq = torch.stack([(draws == v).float().mean() for v in (0.1, 0.3, 0.6)])
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.3, 0.6]), atol=0.015, rtol=0)


def test_importance_sample_rejects_negative_weights():
    with pytest.raises(TagsegError):
        importance_sample(torch.tensor([[[[-0.1, 1.0]]]]), 3)


def test_importance_pooling_by_hand():
    z = torch.tensor([[[[0.2, 0.2], [0.2, 0.2]], [[0.8, 0.8], [0.8, 0.8]]]], requires_grad=True)
    y = importance_pooling(z, n_samples=5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(y, torch.tensor([[0.2, 0.8]]))
    y[0, 1].backward()
    assert z.grad[0, 0].abs().sum() == 0
    assert z.grad[0, 1].sum().item() == pytest.approx(1.0)  # 1/n per draw
    assert ((z.grad[0, 1] * 5) == torch.round(z.grad[0, 1] * 5)).all()


def test_gap_bce_by_hand():
    scores = torch.tensor([[[[1.0, 3.0]], [[-2.0, 0.0]]]])
    labels = torch.tensor([[1.0, 1.0, 0.0]])
    # GAP: 2.0 (target 1), -1.0 (target 0)
    expected = (-math.log(_sigmoid(2.0)) - math.log(1 - _sigmoid(-1.0))) / 2
    assert gap_bce_loss(scores, labels).item() == pytest.approx(expected, rel=1e-6)
    probs = torch.tensor([[[[0.6, 0.2]], [[0.3, 0.1]], [[0.1, 0.7]]]])
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    expected = (-math.log(0.4) - math.log(1 - 0.2) - math.log(0.4)) / 3
    got = gap_bce_loss(probs, labels, has_background=True, from_logits=False)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_classification_loss_mixes_gap_and_isl():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 4, 5, 5, generator=g)
    labels = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0, 0.0]])
    cfg = HFPLConfig(lam=0.3, n_samples=4, formulation="paper")
    got = hfpl_classification_loss(scores, labels, cfg, torch.Generator().manual_seed(9))
    isl = importance_sampling_loss(scores, labels, 4, torch.Generator().manual_seed(9))
    expected = 0.7 * gap_bce_loss(scores, labels) + 0.3 * isl
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_isl_rejects_wrong_channel_count():
    with pytest.raises(TagsegError, match="channels"):
        importance_sampling_loss(torch.zeros(1, 3, 2, 2), torch.ones(1, 3))


# ----------------------------------------------------------------------------- FSL


def test_fsl_two_cells_by_hand():
    # map 1x2, two classes present, sigma 1, mu 2.5
    scores = torch.tensor([[[[2.0, 1.0]], [[0.5, 1.0]]]])
    labels = torch.tensor([[1.0, 1.0, 1.0]])
    image = torch.tensor([[[[0.9, 0.3]], [[0.5, 0.5]], [[0.1, 0.4]]]])
    r = [[1.0, 0.5], [0.5, 1.0]]  # r[class][cell]
    g = 0.5 * ((r[0][0] - r[0][1]) ** 2 + (r[1][0] - r[1][1]) ** 2)
    w = math.exp(-1.0 / 2.0) / (2 * math.pi)
    delta = (0.6 + 0.0 + 0.3) / 3
    f = math.tanh(2.5 + math.log(delta / (1 - delta)))
    expected = -(2 * w * g * f) / 2  # pairs (0,1) and (1,0); the diagonal has g = 0
    # both classes reach 1 in every cell's max, so the background channel 1 − max r is 0 in both
    # cells and adds nothing; background=False (foreground maps only) gives the same value
    for bg in (True, False):
        dense = feature_similarity_loss_dense(scores, labels, image, sigma=1.0, mu=2.5, background=bg)
        fast = feature_similarity_loss(scores, labels, image, sigma=1.0, mu=2.5, block=1, background=bg)
        assert dense.item() == pytest.approx(expected, rel=1e-6)
        assert fast.item() == pytest.approx(expected, rel=1e-6)


def test_fsl_includes_the_background_channel_by_hand():
    # map 1x2, only class 1 present (class 2 absent -> zeroed), sigma 1, mu 2.5
    scores = torch.tensor([[[[2.0, 1.0]], [[0.5, 1.0]]]])
    labels = torch.tensor([[1.0, 1.0, 0.0]])
    image = torch.tensor([[[[0.9, 0.3]], [[0.5, 0.5]], [[0.1, 0.4]]]])
    r1 = [1.0, 0.5]  # class 1 per cell; class 2 is 0
    bg = [1 - 1.0, 1 - 0.5]  # background channel 1 - max_c r_c
    g_fg = 0.5 * (r1[0] - r1[1]) ** 2
    g_bg = 0.5 * ((r1[0] - r1[1]) ** 2 + (bg[0] - bg[1]) ** 2)
    w = math.exp(-1.0 / 2.0) / (2 * math.pi)
    delta = (0.6 + 0.0 + 0.3) / 3
    f = math.tanh(2.5 + math.log(delta / (1 - delta)))
    for use_bg, g in ((True, g_bg), (False, g_fg)):
        expected = -(2 * w * g * f) / 2
        dense = feature_similarity_loss_dense(scores, labels, image, sigma=1.0, mu=2.5, background=use_bg)
        fast = feature_similarity_loss(scores, labels, image, sigma=1.0, mu=2.5, block=1, background=use_bg)
        assert dense.item() == pytest.approx(expected, rel=1e-6)
        assert fast.item() == pytest.approx(expected, rel=1e-6)
    assert g_bg == pytest.approx(2 * g_fg)  # the background doubles the pair term here


def _fsl_inputs(dtype, seed=0, h=9, w=11):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(2, 4, h, w, generator=g, dtype=dtype)
    labels = torch.tensor([[1.0, 1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0, 1.0]], dtype=dtype)
    coarse = torch.rand(2, 3, 3, 3, generator=g, dtype=dtype)
    image = F.interpolate(coarse, size=(4 * h, 4 * w), mode="nearest")  # flat regions and edges
    return scores, labels, image


@pytest.mark.parametrize("block", [1, 11, 33, 1000])
def test_fsl_blockwise_equals_dense_float64(block):
    scores, labels, image = _fsl_inputs(torch.float64)
    s1 = scores.clone().requires_grad_(True)
    s2 = scores.clone().requires_grad_(True)
    dense = feature_similarity_loss_dense(s1, labels, image, sigma=2.0)
    fast = feature_similarity_loss(s2, labels, image, sigma=2.0, block=block)
    dense.backward()
    fast.backward()
    assert fast.item() == pytest.approx(dense.item(), rel=1e-10)
    torch.testing.assert_close(s2.grad, s1.grad, rtol=1e-9, atol=1e-12)


def test_fsl_blockwise_equals_dense_float32():
    scores, labels, image = _fsl_inputs(torch.float32, seed=1)
    s1 = scores.clone().requires_grad_(True)
    s2 = scores.clone().requires_grad_(True)
    dense = feature_similarity_loss_dense(s1, labels, image)
    fast = feature_similarity_loss(s2, labels, image, block=20)
    dense.backward()
    fast.backward()
    assert fast.item() == pytest.approx(dense.item(), rel=1e-5)
    torch.testing.assert_close(s2.grad, s1.grad, rtol=1e-4, atol=1e-7)


def test_fsl_gradient_only_through_g():
    scores, labels, image = _fsl_inputs(torch.float64, seed=2)
    scores.requires_grad_(True)
    image.requires_grad_(True)
    loss = feature_similarity_loss(scores, labels, image, sigma=2.0)
    loss.backward()
    assert image.grad is None
    # the gradient is the Laplacian form -(2/n) (D - W) r pushed through r = relu(s)/max
    assert scores.grad.abs().sum() > 0
    # absent classes (zeroed in r) receive no gradient and do not change the loss
    assert scores.grad[0, 1].abs().sum() == 0 and scores.grad[1, 0].abs().sum() == 0
    other = scores.detach().clone()
    other[0, 1] = torch.randn_like(other[0, 1]) * 5
    assert feature_similarity_loss(other, labels, image, sigma=2.0).item() == pytest.approx(loss.item(), rel=1e-12)


def test_fsl_sign_follows_colour_similarity():
    # one present class active on the left half only: g > 0 only for pairs across the split
    scores = torch.zeros(1, 2, 6, 8, dtype=torch.float64)
    scores[0, 0, :, :4] = 1.0
    labels = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    same = torch.full((1, 3, 6, 8), 0.5, dtype=torch.float64)  # delta = 0 -> f ~ -1: penalise the split
    edge = torch.zeros(1, 3, 6, 8, dtype=torch.float64)
    edge[..., 4:] = 1.0  # delta = 1 across the split -> f ~ +1: reward it
    pull = feature_similarity_loss(scores, labels, same, sigma=2.0)
    push = feature_similarity_loss(scores, labels, edge, sigma=2.0)
    assert pull.item() > 0 and push.item() < 0
    assert pull.item() == pytest.approx(-push.item(), rel=1e-5)  # |f| = 1 - O(1e-6) in both cases


def test_fsl_window_error_is_small_and_vanishes_when_window_covers_the_map():
    scores, labels, image = _fsl_inputs(torch.float64, seed=4, h=24, w=24)
    exact = feature_similarity_loss(scores, labels, image, sigma=2.0)
    full = feature_similarity_loss(scores, labels, image, sigma=2.0, window=20.0)  # 40 cells > diagonal
    assert full.item() == pytest.approx(exact.item(), rel=1e-12)
    errors = {}
    for win in (2.0, 3.0, 4.0):
        approx = feature_similarity_loss(scores, labels, image, sigma=2.0, window=win)
        errors[win] = abs(approx.item() - exact.item()) / abs(exact.item())
    assert errors[4.0] < 1e-3
    assert errors[4.0] < errors[3.0] < errors[2.0]


def test_fsl_patch_family_maps():
    g = torch.Generator().manual_seed(5)
    z = torch.softmax(torch.randn(1, 3, 6, 6, generator=g), dim=1)
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    image = torch.rand(1, 3, 24, 24, generator=g)
    dense = feature_similarity_loss_dense(z, labels, image, has_background=True)
    fast = feature_similarity_loss(z, labels, image, has_background=True)
    assert fast.item() == pytest.approx(dense.item(), rel=1e-5)


def test_fsl_rejects_bad_image():
    scores, labels, _ = _fsl_inputs(torch.float32)
    with pytest.raises(TagsegError, match="3, H, W"):
        feature_similarity_loss(scores, labels, torch.rand(2, 1, 9, 11))
    with pytest.raises(ConfigError):
        feature_similarity_loss(scores, labels, torch.rand(2, 3, 9, 11), sigma=0.0)


def test_hfpl_total():
    scores, labels, image = _fsl_inputs(torch.float32, seed=6)
    cfg = HFPLConfig(fsl_weight=0.5, sigma=2.0, formulation="paper")
    total, parts = hfpl_loss(scores, labels, image, cfg, torch.Generator().manual_seed(0))
    cls = hfpl_classification_loss(scores, labels, cfg, torch.Generator().manual_seed(0))
    fsl = feature_similarity_loss(scores, labels, image, sigma=2.0)
    assert total.item() == pytest.approx(cls.item() + 0.5 * fsl.item(), rel=1e-6)
    assert set(parts) == {"cls", "fsl", "total"}


def test_official_classification_loss_mixes_gap_and_soft_margin_isl():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 4, 5, 5, generator=g)
    labels = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0, 0.0]])
    cfg = HFPLConfig(lam=0.3, n_samples=4, isl_weight=0.5)
    assert cfg.formulation == "official"
    got = hfpl_classification_loss(scores, labels, cfg, torch.Generator().manual_seed(9))
    isl = importance_sampling_loss(scores, labels, 4, torch.Generator().manual_seed(9), official=True)
    expected = 0.7 * gap_bce_loss(scores, labels) + 0.3 * 0.5 * isl
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_official_isl_is_soft_margin_on_the_sampled_logits_by_hand():
    """One channel, one cell: every draw is that cell; loss = softplus(-x) for a present class."""
    scores = torch.tensor([[[[8.0]], [[-8.0]]]], dtype=torch.float64, requires_grad=True)  # saturated logits
    labels = torch.tensor([[1.0, 1.0, 0.0]])
    loss = importance_sampling_loss(scores, labels, 3, torch.Generator().manual_seed(0), official=True)
    expected = 0.5 * (math.log1p(math.exp(-8.0)) + math.log1p(math.exp(-8.0)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # d/dx softplus(-x) = -sigmoid(-x): small but non-zero at saturation (the clamped BCE gives 0)
    assert scores.grad[0, 0, 0, 0].item() == pytest.approx(-0.5 / (1 + math.exp(8.0)), rel=1e-5)


def test_official_fsl_maps_are_min_max_normalised_by_hand():
    scores = torch.tensor([[[[1.0, 2.0, 5.0]]]], dtype=torch.float64)  # all positive: min-max differs from max
    r = fsl_normalised_maps(scores, torch.tensor([[1.0, 1.0]]), official=True)
    expected = [0.0, (2.0 - 1.0 - 1e-5) / (4.0 + 1e-5), (5.0 - 1.0 - 1e-5) / (4.0 + 1e-5)]
    assert r[0, 1, 0].tolist() == pytest.approx(expected, rel=1e-6)
    assert r[0, 0, 0].tolist() == pytest.approx([1.0 - v for v in expected], rel=1e-6)  # background


def test_min_map_size_upsamples_small_maps():
    scores, labels, image = _fsl_inputs(torch.float32, seed=6)
    small = HFPLConfig(min_map_size=2 * scores.shape[-1], sigma=2.0)
    total, _ = hfpl_loss(scores, labels, image, small, torch.Generator().manual_seed(0))
    plain, _ = hfpl_loss(scores, labels, image, HFPLConfig(sigma=2.0), torch.Generator().manual_seed(0))
    assert torch.isfinite(total) and total.item() != pytest.approx(plain.item(), rel=1e-3)
    with pytest.raises(ConfigError, match="min_map_size"):
        HFPLConfig(min_map_size=0)


def test_official_fsl_image_resize_keeps_the_corners():
    """H2: align_corners=True without antialiasing: a 1x3 ramp resized to 1x2 keeps its end values."""
    from tagseg.addons.hfpl import fsl_image_at_map

    image = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3).contiguous()
    out = fsl_image_at_map(image, (1, 2), official=True)
    assert out[0, 0, 0].tolist() == [0.0, 1.0]
    smoothed = fsl_image_at_map(image, (1, 2))
    assert smoothed[0, 0, 0, 0].item() > 0.0  # the antialiased resize averages the neighbours
