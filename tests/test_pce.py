"""Patch contrastive error against a hand computation, and where its gradient flows."""

import math

import pytest
import torch

from tagseg.methods.pce import patch_contrastive_error, patch_similarity


def hand_example():
    # 3 patches, 2-D features, K=2 (background, one object class)
    f = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    z1 = torch.tensor([0.9, 0.95, 0.1])
    probs = torch.stack([1 - z1, z1], dim=-1)[None]  # (1, 3, 2)
    labels = torch.tensor([[1.0, 1.0]])
    return f, probs, labels


def test_similarity_definition():
    f, _, _ = hand_example()
    s = patch_similarity(f[0])
    assert s[0, 1].item() == pytest.approx(0.5)
    assert s[0, 2].item() == pytest.approx(1e-6)  # cos = -1 -> 0, clamped
    assert s[0, 0].item() == pytest.approx(1 - 1e-6)  # clamped


def test_pce_hand_value():
    f, probs, labels = hand_example()
    # class 1: H = {0, 1} (0.9, 0.95 > 0.85), low patch = 2 (0.1)
    #   pairs: -log s01 = -log 0.5 ; negatives: -log(1 - s02) = -log(1 - 1e-6), -log(1 - s12) = -log 0.5
    pce_c1 = -math.log(0.5) + (-math.log(1 - 1e-6) - math.log(0.5)) / 2
    # background: Z_0 = [0.1, 0.05, 0.9]: H = {2}, no pairs; low patch = 1; -log(1 - s21) = -log 0.5
    pce_bg = -math.log(0.5)
    expected = (pce_c1 + pce_bg) / 2
    got = patch_contrastive_error(f, probs, labels, threshold=0.85)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    got_fg = patch_contrastive_error(f, probs, labels, threshold=0.85, skip_background=True)
    assert got_fg.item() == pytest.approx(pce_c1, rel=1e-5)


def test_pce_class_sum_reduction_hand_value():
    f, probs, labels = hand_example()
    # class 1: H = {0, 1}: one pair (no division), two negatives summed (not averaged)
    pce_c1 = -math.log(0.5) + (-math.log(1 - 1e-6) - math.log(0.5))
    pce_bg = -math.log(0.5)  # H = {2}: no pair, one negative
    got = patch_contrastive_error(f, probs, labels, threshold=0.85, reduction="class_sum")
    assert got.item() == pytest.approx((pce_c1 + pce_bg) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        patch_contrastive_error(f, probs, labels, reduction="sum")


def test_pce_reduction_key_and_ratio_in_the_loss_parts():
    from tagseg.config import load_config
    from tagseg.errors import ConfigError
    from tagseg.methods.objective import patch_classifier_loss
    from tagseg.models.patch_classifier import build_patch_classifier

    with pytest.raises(ConfigError, match="pce_reduction"):
        load_config("demo", ["method.pce_reduction=sum"])
    cfg = load_config("demo", ["method.et_weight=0", "method.pce_threshold=0.0", "method.pce_reduction=class_sum"])
    torch.manual_seed(0)
    core = build_patch_classifier(cfg.model, 3, 64)
    batch = {"image": torch.rand(2, 3, 64, 64), "labels": torch.tensor([[1, 1, 0], [1, 0, 1]])}
    _, parts = patch_classifier_loss(core, core, batch, cfg)
    assert parts["pce_mce_ratio"].item() == pytest.approx(0.01 * parts["pce"].item() / parts["mce"].item(), rel=1e-5)
    cfg.method.pce_reduction = "pair_mean"
    torch.manual_seed(0)
    core = build_patch_classifier(cfg.model, 3, 64)
    _, parts_mean = patch_classifier_loss(core, core, batch, cfg)
    # threshold 0: every patch is confident, 16 patches -> 120 pairs summed instead of averaged
    assert parts["pce"].item() > 3 * parts_mean["pce"].item()


def test_pce_bottom_m_option():
    f, probs, labels = hand_example()
    # class 1 with the two lowest patches (2 and 0) as the low set: H = {0,1}
    s = patch_similarity(f[0])
    neg = -torch.log(1 - s)
    pairs = -math.log(s[0, 1].item())
    negs = (neg[0, 2] + neg[1, 2] + neg[0, 0] + neg[1, 0]).item() / 4
    got = patch_contrastive_error(f, probs, labels, threshold=0.85, num_low=2, skip_background=True)
    assert got.item() == pytest.approx(pairs + negs, rel=1e-5)


def test_pce_skips_absent_classes_and_empty_sets():
    f, probs, labels = hand_example()
    # threshold above every score: no valid pair -> exactly 0 (and still differentiable)
    f = f.clone().requires_grad_(True)
    out = patch_contrastive_error(f, probs, labels, threshold=0.99)
    assert out.item() == 0.0
    out.backward()
    # absent class: labels [1, 0] -> only background counts
    got = patch_contrastive_error(f.detach(), probs, torch.tensor([[1.0, 0.0]]), threshold=0.85)
    assert got.item() == pytest.approx(-math.log(0.5), rel=1e-5)


def test_pce_matches_plain_loop_on_random_inputs():
    torch.manual_seed(0)
    b, n, k, d = 2, 12, 4, 5
    f = torch.randn(b, n, d)
    probs = torch.softmax(torch.randn(b, n, k) * 3, dim=-1)
    labels = torch.tensor([[1.0, 1, 0, 1], [1.0, 0, 1, 0]])
    thr = 0.5
    vals = []
    for i in range(b):
        s = patch_similarity(f[i])
        for c in range(k):
            if labels[i, c] < 0.5:
                continue
            high = [p for p in range(n) if probs[i, p, c] > thr]
            if not high:
                continue
            low = int(torch.argmin(probs[i, :, c]))
            pos = 0.0
            if len(high) >= 2:
                pairs = [(a, bb) for ai, a in enumerate(high) for bb in high[ai + 1:]]
                pos = sum(-math.log(s[a, bb].item()) for a, bb in pairs) / len(pairs)
            negv = sum(-math.log(1 - s[a, low].item()) for a in high) / len(high)
            vals.append(pos + negv)
    expected = sum(vals) / len(vals)
    assert patch_contrastive_error(f, probs, labels, threshold=thr).item() == pytest.approx(expected, rel=1e-5)


def test_no_gradient_through_patch_selection():
    torch.manual_seed(1)
    f = torch.randn(2, 10, 6, requires_grad=True)
    logits = torch.randn(2, 10, 3, requires_grad=True)
    probs = torch.softmax(logits * 4, dim=-1)
    labels = torch.ones(2, 3)
    loss = patch_contrastive_error(f, probs, labels, threshold=0.6)
    assert loss.item() > 0
    loss.backward()
    assert logits.grad is None  # selection is under stop-gradient: nothing reaches Z
    assert f.grad is not None and f.grad.abs().sum() > 0
