"""Batched multi-scale + flip inference (several images per forward) equals the per-image loop
on random inputs: the same maps up to float rounding, the same argmax, fewer forward calls."""

from __future__ import annotations

import pytest
import torch

from tagseg.config import load_config
from tagseg.inference.cam import cam_maps, cam_maps_batch
from tagseg.inference.multiscale import multiscale_maps, multiscale_maps_batch
from tagseg.inference.segment import segmentation_forward
from tagseg.methods.cam_objective import build_cam_net
from tagseg.segment.config import SegModelConfig
from tagseg.segment.models import build_segmenter

K = 6
SCALES = (1.0, 0.5, 1.5)


def images(sizes):
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, h, w, generator=g) for h, w in sizes]


@pytest.fixture(scope="module")
def cam_net():
    torch.manual_seed(1)
    cfg = load_config("cam_voc", ["model.encoder=test_resnet", "model.pretrained=false"])
    return build_cam_net(cfg, K).eval()


@pytest.mark.parametrize("flip", [False, True])
def test_cam_maps_batch_equals_the_per_image_loop(cam_net, flip):
    ims = images([(45, 61), (50, 40), (45, 61), (33, 70)])
    got = cam_maps_batch(cam_net, ims, 64, SCALES, flip)
    assert len(got) == len(ims)
    for im, g in zip(ims, got):
        want = cam_maps(cam_net, im, 64, SCALES, flip)
        assert g.shape == want.shape == (K - 1, *im.shape[-2:])
        torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-5)
        assert torch.equal(g.argmax(0), want.argmax(0))


def test_square_policy_is_one_forward_per_scale():
    calls = []

    def forward(batch):
        calls.append(tuple(batch.shape))
        return batch[:, :2] * 3  # a map that follows the pixels, so a wrong mirror shows

    ims = images([(20, 30), (25, 25), (18, 40)])
    got = multiscale_maps_batch(forward, ims, (1.0, 0.5), True, "square", base_size=32, snap=16)
    assert calls == [(6, 3, 32, 32), (6, 3, 16, 16)]  # 3 images + 3 mirrors, per scale
    for im, g in zip(ims, got):
        want = multiscale_maps(forward, im, (1.0, 0.5), True, "square", base_size=32, snap=16)
        torch.testing.assert_close(g, want, rtol=0, atol=1e-6)


def test_aspect_policy_groups_images_of_the_same_size():
    torch.manual_seed(2)
    net = build_segmenter(SegModelConfig(head="deeplabv3plus", encoder="test_resnet", aspp_channels=16,
                                         low_level_channels=8), K, 64).eval()
    calls = []
    fwd = segmentation_forward(net)

    def forward(batch):
        calls.append(batch.shape[0])
        return fwd(batch)

    ims = images([(45, 61), (45, 61), (61, 45)])
    got = multiscale_maps_batch(forward, ims, (1.0, 0.5), True, "aspect")
    assert sorted(calls) == [2, 2, 4, 4]  # per scale: the two 45×61 images together, the other alone
    for im, g in zip(ims, got):
        want = multiscale_maps(fwd, im, (1.0, 0.5), True, "aspect")
        torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-5)
        assert torch.equal(g.argmax(0), want.argmax(0))


def test_out_sizes_must_match_the_images():
    with pytest.raises(ValueError, match="output sizes"):
        multiscale_maps_batch(lambda b: b, images([(8, 8)]), out_sizes=[(8, 8), (4, 4)])
