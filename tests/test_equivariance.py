"""L_ET pieces: the target transform at patch level agrees with the image-level views."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from tagseg.data.geometry import apply_flips, undo_flips, view_b_image
from tagseg.methods.equivariance import (
    build_mosaic, equivariance_loss, equivariance_target, mosaic_indices, split_mosaic, target_grid_transform,
)

S, P = 128, 16  # image size, patch size -> 8x8 grid, view B 64 px -> 4x4 grid


def patch_grid(image: torch.Tensor) -> torch.Tensor:
    """Average over each 16x16 patch: (C, H, W) -> (C, H/16, W/16)."""
    return F.avg_pool2d(image[None], P)[0]


def geom(h=0, v=0, t=0, crop=None):
    c = [0.0, 0.0, 0.0, 0.0] if crop is None else [1.0, float(crop[0]), float(crop[1]), float(crop[2])]
    return torch.tensor([float(h), float(v), float(t)] + c)


@pytest.mark.parametrize("h,v,t", list(itertools.product([0, 1], repeat=3)))
def test_undo_flips_inverts_apply(h, v, t):
    x = torch.arange(2 * 3 * 3.0).reshape(2, 3, 3)
    assert torch.equal(undo_flips(apply_flips(x, h, v, t), h, v, t), x)


def test_flip_order_on_known_grid():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert apply_flips(x, True, False, False).tolist() == [[2, 1], [4, 3]]
    assert apply_flips(x, False, True, False).tolist() == [[3, 4], [1, 2]]
    assert apply_flips(x, False, False, True).tolist() == [[1, 3], [2, 4]]
    # hflip then transpose
    assert apply_flips(x, True, False, True).tolist() == [[2, 4], [1, 3]]


@pytest.mark.parametrize("flips_a,flips_b", [((0, 0, 0), (0, 0, 0)), ((1, 0, 1), (0, 1, 0)),
                                             ((1, 1, 1), (1, 0, 1)), ((0, 1, 0), (1, 1, 1))])
def test_target_transform_matches_image_views_without_crop(flips_a, flips_b):
    """Exact: a 2x bilinear reduction averages 2x2 blocks at image and at patch level alike."""
    torch.manual_seed(0)
    grid = torch.rand(3, S // P, S // P)  # known per-patch content
    image = grid.repeat_interleave(P, 1).repeat_interleave(P, 2)  # piecewise-constant patches
    ga, gb = geom(*flips_a), geom(*flips_b)
    view_a = apply_flips(image, *map(bool, flips_a))
    grid_a = patch_grid(view_a)  # what the network sees on view A, per patch
    expected = patch_grid(view_b_image(image, gb, S // 2))
    got = target_grid_transform(grid_a, ga, gb, P, S // 32)
    assert got.shape == (3, S // 32, S // 32)
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("crop", [(16, 32, 64), (0, 0, 32), (48, 16, 80)])
@pytest.mark.parametrize("flips_b", [(0, 0, 0), (1, 0, 1)])
def test_target_transform_matches_image_views_with_crop(crop, flips_b):
    """With a crop the resize factor is not 2; on a linear ramp bilinear resizing is exact away
    from the borders, so interior cells must agree."""
    yy, xx = torch.meshgrid(torch.arange(S, dtype=torch.float64), torch.arange(S, dtype=torch.float64),
                            indexing="ij")
    ramp = torch.stack([(yy + 0.5) / P * 0.3 + (xx + 0.5) / P * 0.7, (xx + 0.5) / P, (yy + 0.5) / P])
    ga, gb = geom(1, 0, 1), geom(*flips_b, crop=crop)
    grid_a = patch_grid(apply_flips(ramp, True, False, True))
    expected = patch_grid(view_b_image(ramp, gb, S // 2))
    got = target_grid_transform(grid_a, ga, gb, P, S // 32)
    inner = (slice(None), slice(1, -1), slice(1, -1))
    assert torch.allclose(got[inner], expected[inner], atol=1e-6)
    # and it is not trivially equal to an un-cropped transform
    uncropped = target_grid_transform(grid_a, ga, geom(*flips_b), P, S // 32)
    assert not torch.allclose(uncropped[inner], expected[inner], atol=1e-3)


def test_mosaic_roundtrip_and_wrapping():
    torch.manual_seed(0)
    views = torch.rand(6, 3, 8, 8)
    mosaics, idx = build_mosaic(views)
    assert mosaics.shape == (2, 3, 16, 16)
    assert idx.tolist() == [[0, 1, 2, 3], [4, 5, 0, 1]]
    tiles = split_mosaic(mosaics)
    for m in range(2):
        for q in range(4):
            assert torch.equal(tiles[m, q], views[idx[m, q]])
    assert mosaic_indices(1).tolist() == [[0, 0, 0, 0]]


def test_equivariance_loss_hand_value():
    # one mosaic of 2x2 patches (1x1 tile each), K = 2
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, 0, 0] = math.log(3.0)  # tile 0: p = (0.25, 0.75)
    idx = torch.tensor([[0, 1, 0, 1]])
    target = torch.tensor([[0.5, 0.5], [1.0, 0.0]]).reshape(2, 2, 1, 1)
    # tile 0: -(0.5 log .25 + 0.5 log .75); tiles 1,3: p=(.5,.5), T=(1,0): -log .5; tile 2: T=(.5,.5): -log .5
    expected = (-(0.5 * math.log(0.25) + 0.5 * math.log(0.75)) + 3 * -math.log(0.5)) / 4
    assert equivariance_loss(logits, idx, target).item() == pytest.approx(expected, rel=1e-6)


def test_target_carries_no_gradient_and_is_label_merged():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    probs = logits.softmax(1)
    labels = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    geoms = torch.stack([geom(1, 0, 0), geom(0, 0, 1)])
    target = equivariance_target(probs, geoms, geoms, labels, P)
    assert not target.requires_grad
    assert target.shape == (2, 3, 4, 4)
    assert torch.all(target[0, 2] == 0) and torch.all(target[1, 1] == 0)
    assert torch.allclose(target.sum(1), torch.ones(2, 4, 4), atol=1e-6)
    # gradient of L_ET reaches the mosaic logits only
    mosaic_logits = torch.randn(1, 3, 8, 8, requires_grad=True)
    equivariance_loss(mosaic_logits, torch.tensor([[0, 1, 0, 1]]), target).backward()
    assert mosaic_logits.grad.abs().sum() > 0
    assert logits.grad is None
