"""The official CAM recipe (configs/cam_voc_official.yaml): resize-long + crop + hflip views, fixed
BatchNorm, SGD with a per-step poly decay and a larger head learning rate; tagseg's recipe stays cam_voc."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tagseg.config import AugmentConfig
from tagseg.data.views import IMAGENET_MEAN, resize_long_crop
from tagseg.engine.phases import is_batchnorm
from tagseg.engine.schedule import PhaseSchedule, PolySchedule
from tagseg.errors import ConfigError
from tagseg.experiment import load_experiment
from tagseg.methods.cam_objective import build_cam_net
from tagseg.classify.trainer import Trainer, optimizer_and_schedule

from fixtures import make_voc
from test_cam_family import TINY

OFFICIAL_TINY = [o for o in TINY if not o.startswith(("train.warmup_epochs", "train.unfreeze_blocks"))]


def official(*extra: str, root="unused"):
    return load_experiment("cam_voc_official", [f"data.root={root}", *OFFICIAL_TINY, *extra])


def test_official_recipe_numbers():
    cfg = load_experiment("cam_voc_official", ["data.root=unused"])
    t = cfg.train
    assert (t.optimizer, t.lr_schedule, t.lr, t.head_lr_mult, t.poly_power, t.weight_decay) == (
        "sgd", "poly", 0.01, 10.0, 0.9, 5e-4)
    assert (t.batch_size, t.epochs, cfg.model.bn) == (8, 8, "frozen")
    a = t.augment
    assert (a.geometry, tuple(a.resize_long), a.hflip_prob, a.vflip_prob, a.transpose_prob) == (
        "resize_long_crop", (448, 768), 0.5, 0.0, 0.0)
    today = load_experiment("cam_voc", ["data.root=unused"]).train  # tagseg's recipe, still by name
    assert (today.optimizer, today.lr_schedule, today.augment.geometry) == ("adam", "phases", "square")


def test_sgd_poly_head_multiplier_and_fixed_batchnorm():
    cfg = official()
    net = build_cam_net(cfg, 21)
    opt, schedule = optimizer_and_schedule(net, cfg, total_steps=100)
    assert isinstance(opt, torch.optim.SGD) and isinstance(schedule, PolySchedule)
    assert opt.param_groups[0]["momentum"] == 0.0005
    norms = [m for m in net.encoder.modules() if is_batchnorm(m)]
    assert norms and all(not p.requires_grad for m in norms for p in m.parameters(recurse=False))
    assert set(norms) <= set(schedule.frozen)  # kept in eval mode: statistics fixed too
    schedule.step(0, opt)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.01])  # head 10x from the first step
    schedule.step(50, opt)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.01 * 0.5 ** 0.9)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 0.9)
    _, phases = optimizer_and_schedule(net, load_experiment("cam_voc", ["data.root=unused", *TINY]), 100)
    assert isinstance(phases, PhaseSchedule)


def test_resize_long_crop_places_a_small_image_on_the_mean_colour():
    img = torch.rand(3, 10, 20)  # long side 20 -> 16: (8, 16)
    out = resize_long_crop(img, (16, 16), 32, np.random.default_rng(0))
    assert out.shape == (3, 32, 32)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    not_mean = (out != mean).any(dim=0)
    rows, cols = not_mean.any(dim=1).nonzero().flatten(), not_mean.any(dim=0).nonzero().flatten()
    assert int(rows.max() - rows.min() + 1) <= 8 and int(cols.max() - cols.min() + 1) <= 16
    assert not_mean.sum() > 0.8 * 8 * 16


def test_resize_long_crop_of_a_large_image_is_a_crop_of_the_resized_image():
    img = torch.rand(3, 40, 30)  # long side 40 -> 40 (no resize), crop 24
    out = resize_long_crop(img, (40, 40), 24, np.random.default_rng(3))
    found = any(torch.allclose(out, img[:, t:t + 24, l:l + 24].clamp(0, 1), atol=1e-5)
                for t in range(17) for l in range(7))
    assert found


def test_resize_long_crop_settings_are_checked():
    with pytest.raises(ConfigError, match="resize_long"):
        official("train.augment.resize_long=[500,400]")
    with pytest.raises(ConfigError, match="geometry"):
        official("train.augment.geometry=other")
    with pytest.raises(ConfigError, match="optimizer"):
        official("train.optimizer=rmsprop")
    assert AugmentConfig().geometry == "square"


@pytest.mark.slow
def test_official_recipe_trains_a_tiny_cam_run(tmp_path):
    root = tmp_path / "voc"
    make_voc(root, n=4)
    cfg = official("train.augment.resize_long=[48,96]", root=root)
    path = Trainer(cfg, tmp_path / "run", show_progress=False).fit()
    assert path.exists()
