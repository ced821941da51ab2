"""The segmentation stage's CPU recipe: every ASPP tap learns at the training crop size.

The VOC benchmark trained DeepLab v3+ at 160-px crops with the 513-px rates (6, 12, 18) at
output stride 16: a 10 × 10 feature map, so the rate-12 and rate-18 branches' off-centre taps
read only zero padding in training and kept their initial weights, then read image content at
inference on whole images. These tests catch that."""

from __future__ import annotations

import pytest
import torch

from conftest import load_benchmark
from tagseg.segment.config import load_segment_config
from tagseg.segment.models import build_segmenter, default_rates, rates_for_crop, unreached_rates


def dilated_taps_without_gradient(net: torch.nn.Module, crop: int) -> list[str]:
    """Names of the head's dilated 3×3 convolutions with a tap (of 9) whose weights get no
    gradient from one backward pass on a batch of ``crop``-px images."""
    net.train()
    x = torch.rand(2, 3, crop, crop, generator=torch.Generator().manual_seed(0))
    net(x).square().mean().backward()
    dead = []
    for name, m in net.head.named_modules():
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) and m.dilation[0] > 1:
            per_tap = m.weight.grad.abs().sum(dim=(0, 1))  # (3, 3)
            if (per_tap == 0).any():
                dead.append(f"{name} (rate {m.dilation[0]})")
    return dead


def test_rates_for_crop_by_hand():
    assert rates_for_crop("deeplabv3plus", 16, 513) == (6, 12, 18)
    assert rates_for_crop("deeplabv3plus", 16, 160) == (2, 4, 6)  # 6·160/513 = 1.87 -> 2, 3.74 -> 4, 5.61 -> 6
    assert rates_for_crop("deeplabv3plus", 8, 321) == (8, 15, 23)  # (12, 24, 36)·0.626
    assert rates_for_crop("deeplabv2", 16, 20) == (1, 1, 1, 1)


def test_unreached_rates_by_hand():
    # 160 px at stride 16: 10 cells; rates >= 10 never reach inside
    assert unreached_rates((6, 12, 18), 160, 16) == [12, 18]
    assert unreached_rates((2, 4, 6), 160, 16) == []
    assert unreached_rates((6, 12, 18), 513, 16) == []  # 33 cells: the paper's setting
    assert unreached_rates((12, 24, 36), 161, 8) == [24, 36]  # 21 cells


def small_net(rates):
    cfg = load_segment_config(None, ["model.head=deeplabv3plus", "model.encoder=test_resnet", "model.pretrained=false",
                                     "model.output_stride=16", "model.aspp_channels=8", "model.low_level_channels=4",
                                     f"model.aspp_rates=[{','.join(map(str, rates))}]"])
    torch.manual_seed(0)
    return build_segmenter(cfg.model, 4, 160)


def test_dead_taps_are_found_where_the_rates_overreach():
    assert sorted(dilated_taps_without_gradient(small_net((6, 12, 18)), 160)) == \
        ["aspp.branches.2.0 (rate 12)", "aspp.branches.3.0 (rate 18)"]


@pytest.mark.parametrize("crop", ["160", "321"])
def test_the_voc_benchmark_recipe_trains_every_tap(crop):
    bench = load_benchmark("segment_voc")
    args = bench.parse_args(["--gt-only", "--crop", crop])
    over = bench.run_overrides(args, "gt")
    cfg = load_segment_config("segment_voc", over)
    rates = tuple(cfg.model.aspp_rates) or default_rates(cfg.model.head, cfg.model.output_stride)
    assert unreached_rates(rates, cfg.augment.crop_size, cfg.model.output_stride) == []
    assert dilated_taps_without_gradient(small_net(rates), cfg.augment.crop_size) == []


def test_the_shipped_cpu_config_trains_every_tap():
    cfg = load_segment_config("segment_voc_cpu")
    assert (cfg.model.encoder, cfg.model.weights, cfg.train.freeze_backbone_bn) == ("tf_efficientnet_lite0", "lite", False)
    rates = tuple(cfg.model.aspp_rates)
    assert rates == rates_for_crop(cfg.model.head, cfg.model.output_stride, cfg.augment.crop_size)
    assert unreached_rates(rates, cfg.augment.crop_size, cfg.model.output_stride) == []
    assert dilated_taps_without_gradient(small_net(rates), cfg.augment.crop_size) == []
