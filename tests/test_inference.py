"""The shared inference layer equals the three loops it replaced (patch pseudo-masks, CAMs,
segmentation logits), numerically and in the masks it gives, on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tagseg.config import load_config
from tagseg.inference.cam import cam_maps, cam_merged_probabilities, normalised_cams
from tagseg.inference.multiscale import multiscale_maps, scaled_input, snapped_side
from tagseg.inference.patch import patch_merged_probabilities, patch_probs
from tagseg.inference.pseudo import merged_probabilities, merged_probs_for
from tagseg.inference.segment import multiscale_logits, segmentation_probs
from tagseg.methods.cam_objective import cam_probabilities, normalise_cams
from tagseg.methods.label_merge import label_merge
from tagseg.methods.cam_objective import build_cam_net
from tagseg.models.patch_classifier import build_patch_classifier
from tagseg.segment.config import SegModelConfig
from tagseg.segment.models import build_segmenter

K = 6
SCALES = (1.0, 0.5, 1.5)


# ----------------------------------------------------------- the replaced implementations, verbatim


def _size(base: int, scale: float) -> int:
    return max(16, int(round(base * scale / 16)) * 16)


def old_patch_probs(model, image, size, scales=(1.0,), flip=False):
    base_cells = size // 16
    acc = None
    n = 0
    for s in scales:
        side = _size(size, s)
        x = F.interpolate(image[None], size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        batch = torch.cat([x, x.flip(-1)]) if flip else x
        z = model(batch).probs.permute(0, 3, 1, 2)
        if flip:
            z = torch.stack([z[0], z[1].flip(-1)])
        if z.shape[-1] != base_cells:
            z = F.interpolate(z, size=(base_cells, base_cells), mode="bilinear", align_corners=False)
        z = z.sum(0)
        acc = z if acc is None else acc + z
        n += batch.shape[0]
    return acc / n


def old_patch_merged(model, image, labels, cfg):
    z = old_patch_probs(model, image, cfg.image_size, cfg.scales, cfg.flip)
    t = torch.as_tensor(labels, device=z.device)[None]
    merged = label_merge(z[None], t)[0]
    return F.interpolate(merged[None], size=image.shape[-2:], mode="bilinear", align_corners=False)[0].float()


def old_cam_maps(core, image, size, scales=(1.0,), flip=False):
    h, w = image.shape[-2:]
    acc = None
    for s in scales:
        side = _size(size, s)
        x = F.interpolate(image[None].float(), size=(side, side), mode="bilinear", align_corners=False,
                          antialias=True)
        batch = torch.cat([x, x.flip(-1)]) if flip else x
        maps = F.relu(core.inference_maps(batch).float())
        if flip:
            maps = torch.stack([maps[0], maps[1].flip(-1)])
        maps = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False).sum(0)
        acc = maps if acc is None else acc + maps
    return acc


def old_multiscale_logits(model, image, scales=(1.0,), flip=False):
    _, h, w = image.shape
    acc = None
    n = 0
    for s in scales:
        size = max(1, int(round(h * s))), max(1, int(round(w * s)))
        x = image[None]
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=s < 1)
        batch = torch.cat([x, x.flip(-1)]) if flip else x
        logits = model(batch).float()
        if flip:
            logits = torch.stack([logits[0], logits[1].flip(-1)])
        if logits.shape[-2:] != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        part = logits.sum(0)
        acc = part if acc is None else acc + part
        n += batch.shape[0]
    return acc / n


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def patch_net():
    torch.manual_seed(0)
    cfg = load_config("tkpcl_voc", ["model.encoder=test_resnet", "model.pretrained=false", "model.lstm_hidden=8"])
    return build_patch_classifier(cfg.model, K, 64).eval()


@pytest.fixture(scope="module")
def cam_net():
    torch.manual_seed(1)
    cfg = load_config("cam_voc", ["model.encoder=test_resnet", "model.pretrained=false"])
    return build_cam_net(cfg, K).eval()


@pytest.fixture(scope="module")
def seg_net():
    torch.manual_seed(2)
    return build_segmenter(SegModelConfig(head="deeplabv3plus", encoder="test_resnet", aspp_channels=16,
                                          low_level_channels=8), K, 64).eval()


def pseudo_cfg(family: str, *extra: str):
    name = "cam_voc" if family == "cam" else "tkpcl_voc"
    return load_config(name, ["pseudo.image_size=64", *extra]).pseudo


def random_image(seed: int, h: int = 45, w: int = 61) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


LABELS = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])


# --------------------------------------------------------------------------------------- tests


def test_resize_policies():
    image = random_image(0, 30, 50)
    assert snapped_side(448, 1.0) == 448 and snapped_side(448, 0.75) == 336 and snapped_side(20, 0.1) == 16
    assert scaled_input(image, 0.5, "square", base_size=64).shape == (1, 3, 32, 32)
    assert scaled_input(image, 0.5, "aspect").shape == (1, 3, 15, 25)
    assert torch.equal(scaled_input(image, 1.0, "aspect")[0], image)  # no resampling at scale 1
    with pytest.raises(ValueError, match="base_size"):
        scaled_input(image, 1.0, "square")
    with pytest.raises(ValueError, match="resize policy"):
        scaled_input(image, 1.0, "round")


def test_flip_is_batched_with_the_original_and_mirrored_back():
    calls = []

    def forward(batch):
        calls.append(batch.shape[0])
        return batch[:, :1] * 2  # (B, 1, h, w): a map that follows the pixels

    image = random_image(3, 8, 10)
    out = multiscale_maps(forward, image, (1.0,), flip=True)
    assert calls == [2]  # one forward call with the image and its mirror
    assert torch.allclose(out, image[:1] * 2, atol=1e-6)  # the mirrored map was flipped back
    summed = multiscale_maps(forward, image, (1.0, 1.0), flip=True, average=False)
    assert torch.allclose(summed, 4 * image[:1] * 2, atol=1e-5)


@pytest.mark.parametrize("flip", [False, True])
def test_patch_path_equals_the_old_loop(patch_net, flip):
    for seed in range(3):
        image = random_image(seed)
        new = patch_probs(patch_net, image, 64, SCALES, flip)
        assert torch.equal(new, old_patch_probs(patch_net, image, 64, SCALES, flip))
        cfg = pseudo_cfg("patch", f"pseudo.flip={str(flip).lower()}", "pseudo.scales=[1.0,0.5,1.5]",
                         "pseudo.align_corners=false")  # the old loop's resizes
        got = patch_merged_probabilities(patch_net, image, LABELS, cfg)
        want = old_patch_merged(patch_net, image, LABELS, cfg)
        assert torch.equal(got, want)
        assert torch.equal(got.argmax(0), want.argmax(0))


@pytest.mark.parametrize("flip", [False, True])
def test_cam_path_equals_the_old_loop(cam_net, flip):
    for seed in range(3):
        image = random_image(10 + seed)
        old = old_cam_maps(cam_net, image, 64, SCALES, flip)
        new = cam_maps(cam_net, image, 64, SCALES, flip)
        assert torch.allclose(new, old, atol=1e-6, rtol=1e-6)
        cfg = pseudo_cfg("cam", f"pseudo.flip={str(flip).lower()}", "pseudo.scales=[1.0,0.5,1.5]")
        want = cam_probabilities(normalise_cams(old, LABELS), cfg.bg_threshold)
        got = cam_merged_probabilities(cam_net, image, LABELS, cfg)
        assert torch.allclose(got, want, atol=1e-6)
        assert torch.equal(got.argmax(0), want.argmax(0))
        assert torch.allclose(normalised_cams(cam_net, image, LABELS, cfg), normalise_cams(old, LABELS), atol=1e-6)


@pytest.mark.parametrize("flip", [False, True])
def test_segmentation_path_equals_the_old_loop(seg_net, flip):
    for seed in range(3):
        image = random_image(20 + seed, 37, 53)
        new = multiscale_logits(seg_net, image, (0.5, 1.0, 1.25), flip)
        old = old_multiscale_logits(seg_net, image, (0.5, 1.0, 1.25), flip)
        assert torch.equal(new, old)
        uint8 = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        probs = segmentation_probs(seg_net, uint8, (0.5, 1.0, 1.25), flip)
        x = torch.from_numpy(uint8).permute(2, 0, 1).float() / 255
        want = torch.softmax(old_multiscale_logits(seg_net, x, (0.5, 1.0, 1.25), flip), dim=0)
        assert torch.allclose(probs, want, atol=1e-6)
        assert torch.equal(probs.argmax(0), want.argmax(0))


def test_pseudo_probabilities_are_keyed_by_family(patch_net, cam_net):
    image = (random_image(30).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    old_resizes = pseudo_cfg("patch", "pseudo.align_corners=false")  # the old loop's resizes
    p = merged_probabilities(patch_net, image, LABELS, old_resizes, family="patch")
    assert torch.equal(p, old_patch_merged(patch_net, x, LABELS, old_resizes))
    c = merged_probabilities(cam_net, image, LABELS, pseudo_cfg("cam"), family="cam")
    assert c.shape == (K, 45, 61) and torch.allclose(c.sum(0), torch.ones(45, 61), atol=1e-5)
    from tagseg.errors import ConfigError

    with pytest.raises(ConfigError, match="'nope'.*known: \\['cam', 'patch', 'seam'\\]"):
        merged_probs_for("nope")
