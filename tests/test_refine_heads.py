"""The refinement heads on a small random-init timm encoder."""

import pytest
import torch

from tagseg.models.encoder import PatchEncoder
from tagseg.refine.heads import (AffinityHead, BoundaryBranch, encoder_pyramid, feature_affinity, path_affinity,
                                 pyramid_channels, pyramid_levels)
from tagseg.refine.pairs import build_path_index, pairs_in_grid
from tagseg.refine.random_walk import boundary_to_pair_affinity


def _encoder():
    torch.manual_seed(0)
    return PatchEncoder("resnet18", pretrained=False, image_size=64).eval()


def test_pyramid_and_heads_shapes():
    enc = _encoder()
    levels = pyramid_levels(enc)
    chans = pyramid_channels(enc, levels)
    feats = encoder_pyramid(enc, torch.rand(2, 3, 64, 64), levels)
    assert [f.shape[1] for f in feats] == chans and feats[0].shape[-1] == 16   # stride 4 first
    assert all(not f.requires_grad for f in feats)
    edge = BoundaryBranch(chans)(feats, (16, 16))
    assert edge.shape == (2, 1, 16, 16)
    aff_feat = AffinityHead(chans)(feats)
    assert aff_feat.shape == (2, 448) + feats[-3].shape[-2:]


def test_vit_pyramid():
    enc = PatchEncoder("vit_tiny_patch16_224", pretrained=False, image_size=64).eval()
    levels = pyramid_levels(enc)
    assert len(levels) == 4 and levels[-1] == enc.feature_index
    feats = encoder_pyramid(enc, torch.rand(1, 3, 64, 64), levels)
    assert all(f.shape == (1, enc.out_channels, 4, 4) for f in feats)


def test_feature_affinity_by_hand():
    f = torch.tensor([[[[0.0, 1.0, 3.0]], [[0.0, 1.0, 1.0]]]])      # (1, 2, 1, 3)
    aff = feature_affinity(f, torch.tensor([0, 0, 1]), torch.tensor([1, 2, 2]))
    expected = torch.exp(-torch.tensor([[1.0, 2.0, 1.0]]))           # mean |diff|: 1, (3+1)/2, (2+0)/2
    torch.testing.assert_close(aff, expected)


def test_path_affinity_matches_the_walk_affinity():
    # training (path index) and inference (pairs in grid) give the same affinity to the same pair
    torch.manual_seed(1)
    b = torch.rand(8, 12)
    pi = build_path_index(3, 8, 12)
    train = path_affinity(b[None, None], [torch.from_numpy(p) for p in pi.path_indices])[0]
    src, dst, aff = boundary_to_pair_affinity(b, 3)
    lookup = {(int(s), int(d)): float(a) for s, d, a in zip(src, dst, aff)}
    for k in range(pi.dst.shape[0]):
        for j in range(pi.dst.shape[1]):
            assert abs(lookup[(int(pi.src[j]), int(pi.dst[k, j]))] - float(train[k, j])) < 1e-7
    assert len(lookup) == len(pairs_in_grid(8, 12, 3)[0])


@pytest.mark.parametrize("shape,radius", [((2, 7, 9, 11), 5), ((1, 3, 4, 13), 5), ((1, 5, 6, 6), 3), ((1, 2, 1, 3), 5)])
def test_grid_feature_affinity_equals_the_gathered_pairs(shape, radius):
    from tagseg.refine.heads import grid_feature_affinity
    from tagseg.refine.pairs import pairs_in_grid, search_offsets

    f = torch.randn(*shape, generator=torch.Generator().manual_seed(radius + shape[-1]))
    src, dst, _ = pairs_in_grid(shape[2], shape[3], radius)
    ref = feature_affinity(f, torch.from_numpy(src), torch.from_numpy(dst))
    fast = grid_feature_affinity(f, search_offsets(radius))
    assert fast.shape == ref.shape == (shape[0], len(src))
    assert torch.allclose(fast, ref, atol=1e-6, rtol=1e-5)
