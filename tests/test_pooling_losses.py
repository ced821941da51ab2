"""Pooling, MCE, L2 and label merge against hand-computed values."""

import math

import pytest
import torch

from tagseg.errors import ConfigError
from tagseg.methods.label_merge import label_merge
from tagseg.methods.losses import l2_penalty, multilabel_ce
from tagseg.methods.pooling import avg_pool, max_pool, pool_patch_scores, topk_pool


@pytest.fixture
def z():
    # B=1, N=4 patches, K=2 classes
    return torch.tensor([[[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]]])


def test_avg_max_topk_values(z):
    assert torch.allclose(avg_pool(z), torch.tensor([[0.5, 0.5]]))
    assert torch.allclose(max_pool(z), torch.tensor([[0.9, 0.8]]))
    assert torch.allclose(topk_pool(z, 2), torch.tensor([[(0.9 + 0.6) / 2, (0.8 + 0.7) / 2]]))
    assert torch.allclose(topk_pool(z, 1), max_pool(z))
    assert torch.allclose(topk_pool(z, 4), avg_pool(z))
    assert torch.allclose(topk_pool(z, 99), avg_pool(z))  # k clamped to N


def test_pool_dispatch_and_errors(z):
    assert torch.allclose(pool_patch_scores(z, "topk", 2), topk_pool(z, 2))
    with pytest.raises(ConfigError):
        pool_patch_scores(z, "median")
    with pytest.raises(ConfigError):
        topk_pool(z, 0)


def test_topk_gradient_reaches_exactly_k_patches():
    torch.manual_seed(0)
    z = torch.rand(3, 20, 5, requires_grad=True)
    k = 6
    topk_pool(z, k).sum().backward()
    grad = z.grad
    top = z.detach().topk(k, dim=1).indices
    for b in range(3):
        for c in range(5):
            nonzero = torch.nonzero(grad[b, :, c]).flatten()
            assert sorted(nonzero.tolist()) == sorted(top[b, :, c].tolist())
            assert torch.allclose(grad[b, nonzero, c], torch.full((k,), 1.0 / k))


def test_max_gradient_reaches_one_patch():
    z = torch.rand(2, 10, 3, requires_grad=True)
    max_pool(z).sum().backward()
    assert ((z.grad != 0).sum(dim=1) == 1).all()


def test_mce_hand_value():
    y = torch.tensor([[0.9, 0.2], [1.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    eps = 1e-7
    expected = (-math.log(0.9) - math.log(0.8) - math.log(1 - eps) - math.log(1 - eps)) / 4
    assert multilabel_ce(y, t).item() == pytest.approx(expected, rel=1e-5)


def test_mce_clamps_to_finite():
    y = torch.tensor([[0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0]])
    val = multilabel_ce(y, t).item()
    assert math.isfinite(val)
    # -log(1e-7) for the first term; in float32, 1 - (1 - 1e-7) is 1.19e-7 for the second
    expected = (-math.log(1e-7) - math.log(1.1920929e-07)) / 2
    assert val == pytest.approx(expected, rel=1e-4)


def test_l2_penalty():
    w = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    assert l2_penalty(w, 0.01).item() == pytest.approx(0.01 * 15)


def test_label_merge_hand_example():
    # (B=1, K=3, N=2)
    z = torch.tensor([[[0.5, 0.2], [0.3, 0.6], [0.2, 0.2]]])
    t = torch.tensor([[1.0, 1.0, 0.0]])
    out = label_merge(z, t)
    expected = torch.tensor([[[1 / 1.5, 0.4 / 1.4], [0.5 / 1.5, 1.0 / 1.4], [0.0, 0.0]]])
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(out.sum(1), torch.ones(1, 2))


def test_label_merge_zero_guard_and_layout():
    z = torch.zeros(1, 3, 2, 2)
    z[:, 2] = 1.0  # all mass on an absent class
    t = torch.tensor([[1.0, 1.0, 0.0]])
    out = label_merge(z, t)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[:, :2], torch.full((1, 2, 2, 2), 0.5))  # uniform over present classes
    # class axis last gives the same as class axis first
    zz = torch.rand(2, 4, 3, 3)
    tt = torch.tensor([[1.0, 0, 1, 1], [1.0, 1, 0, 0]])
    a = label_merge(zz, tt)
    b = label_merge(zz.permute(0, 2, 3, 1), tt, class_dim=3).permute(0, 3, 1, 2)
    assert torch.allclose(a, b)
