"""Repeat-factor sampling: the factors against hand-computed values, the epoch sampler's draw
(deterministic per epoch, proportional to the weights, partitioned under data parallelism), and
its use by the engine's loader and the segmentation stage."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tagseg.engine.distributed import DistInfo
from tagseg.engine.loop import make_loader
from tagseg.engine.sampling import EpochWeightedSampler, repeat_factors
from tagseg.errors import ConfigError

# 4 images, classes (background, a, b): background everywhere, a in 2 images (f = 1/2), b in 1 (f = 1/4)
TAGS = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 0, 0]], np.float32)


def test_repeat_factors_by_hand():
    # t = 1/2: r(a) = max(1, sqrt(0.5 / 0.5)) = 1, r(b) = sqrt(0.5 / 0.25) = sqrt(2); image = max over its classes
    assert repeat_factors(TAGS, 0.5) == pytest.approx([1, math.sqrt(2), 1, 1])
    # t = 1: r(a) = sqrt(2), r(b) = 2
    assert repeat_factors(TAGS, 1.0) == pytest.approx([math.sqrt(2), 2, 1, 1])
    # t at or below every class's frequency: nothing is oversampled
    assert repeat_factors(TAGS, 0.25) == pytest.approx([1, 1, 1, 1])
    # a class absent from every image and an image without tags are harmless
    tags = np.array([[0, 1, 0], [0, 0, 0]], np.float32)
    assert repeat_factors(tags, 1.0) == pytest.approx([math.sqrt(2), 1])


@pytest.mark.parametrize("labels,t", [(np.zeros((0, 3)), 0.5), (np.ones(3), 0.5), (TAGS, 0.0), (TAGS, 1.5)])
def test_repeat_factors_refuse_bad_input(labels, t):
    with pytest.raises(ValueError):
        repeat_factors(labels, t)


def test_sampler_is_a_function_of_seed_and_epoch():
    s = EpochWeightedSampler([1, 2, 3, 4], seed=7)
    first = list(s)
    assert len(first) == len(s) == 4 and list(s) == first
    s.set_epoch(1)
    others = [list(s)]
    for epoch in range(2, 6):
        s.set_epoch(epoch)
        others.append(list(s))
    assert any(o != first for o in others)        # the epochs draw differently
    s.set_epoch(0)
    assert list(s) == first                       # ... and epoch 0 again draws the same
    assert list(EpochWeightedSampler([1, 2, 3, 4], seed=8)) != first or list(EpochWeightedSampler(
        [1, 2, 3, 4], seed=9)) != first


def test_sampler_draws_in_proportion_to_the_weights():
    s = EpochWeightedSampler([0.0, 1.0, 3.0], seed=0, num_samples=40000)
    counts = np.bincount(list(s), minlength=3) / 40000
    assert counts[0] == 0                          # a zero weight is never drawn
    assert counts[2] == pytest.approx(0.75, abs=0.01) and counts[1] == pytest.approx(0.25, abs=0.01)


def test_data_parallel_slices_partition_one_draw():
    whole = EpochWeightedSampler(np.arange(1, 11), seed=3, num_samples=10)
    whole.set_epoch(2)
    draw = whole._draw()
    parts = []
    for rank in range(3):
        s = EpochWeightedSampler(np.arange(1, 11), seed=3, num_samples=10, rank=rank, world_size=3)
        s.set_epoch(2)
        parts.append(list(s))
        assert len(parts[-1]) == len(s) == 4      # 10 padded to 12, 4 per process
    assert [parts[i % 3][i // 3] for i in range(12)] == draw[:10] + draw[:2]


@pytest.mark.parametrize("weights", [[], [1, -1], [0, 0], [1, float("nan")]])
def test_sampler_refuses_bad_weights(weights):
    with pytest.raises(ValueError):
        EpochWeightedSampler(weights, seed=0)


def test_engine_loader_draws_by_the_task_weights():
    data = torch.arange(6)
    task = SimpleNamespace(dataset=data, sample_weights=[0, 0, 0, 0, 0, 1.0], seed=0, batch_size=3,
                           num_workers=0, persistent_workers=False)
    loader, sampler = make_loader(task, DistInfo(), torch.device("cpu"))
    sampler.set_epoch(1)
    assert torch.cat(list(loader)).tolist() == [5] * 6   # as many items as the dataset, all drawn by weight
    task.sample_weights = [1.0] * 5
    with pytest.raises(ValueError, match="5 sampling weights for 6 items"):
        make_loader(task, DistInfo(), torch.device("cpu"))


def test_segment_config_checks_the_sampling_keys(tmp_path):
    from tagseg.segment.config import load_segment_config
    with pytest.raises(ConfigError, match="train.sampling"):
        load_segment_config("segment_demo", ["train.sampling=balanced"])
    with pytest.raises(ConfigError, match="train.repeat_threshold"):
        load_segment_config("segment_demo", ["train.sampling=repeat_factor", "train.repeat_threshold=0"])


def test_segmentation_trains_with_repeat_factor_sampling(tmp_path, capsys):
    from test_segmentation import tiny_config, tiny_voc
    from tagseg.segment.trainer import SegmentationTrainer
    tiny_voc(tmp_path / "voc", n=4)
    uniform = SegmentationTrainer(tiny_config(tmp_path / "voc", "train.epochs=1"), tmp_path / "u",
                                  show_progress=False).fit()
    capsys.readouterr()
    cfg = tiny_config(tmp_path / "voc", "train.epochs=1", "train.sampling=repeat_factor", "train.repeat_threshold=1")
    weighted = SegmentationTrainer(cfg, tmp_path / "w", show_progress=False).fit()
    assert "repeat-factor sampling (threshold 1.0)" in capsys.readouterr().out
    from safetensors.torch import load_file
    a, b = load_file(str(uniform)), load_file(str(weighted))
    assert any(not torch.equal(a[k], b[k]) for k in a)   # another draw of images, other weights
