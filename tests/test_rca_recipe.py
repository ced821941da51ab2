"""RCA's official base recipe (configs/cam_voc_rca_official.yaml): VGG-16, squashed square views with
colour jitter, SGD with Nesterov momentum, four lr groups (1x, 2x, 10x, 20x) and a step decay."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import default_collate

from tagseg.config import LR_SCHEDULES
from tagseg.data.build import build_index
from tagseg.data.views import TrainingViews
from tagseg.engine.schedule import StepSchedule, step_lr
from tagseg.errors import ConfigError
from tagseg.experiment import load_experiment
from tagseg.methods.families import get_family
from tagseg.classify.trainer import optimizer_and_schedule

from fixtures import make_voc
from test_cam_family import TINY

# the official recipe's own keys stay; only the data, the size and the weights become tiny
RCA_TINY = [o for o in TINY if o.split("=")[0] in (
    "data.dataset", "data.train_split", "data.pseudo_split", "data.image_size", "data.num_workers",
    "model.pretrained", "train.batch_size", "pseudo.image_size", "pseudo.scales", "pseudo.flip", "seed",
    "train.cpu_threads")]



def rca(*extra: str, root="unused"):
    return load_experiment("cam_voc_rca_official", [f"data.root={root}", *RCA_TINY, *extra])


def test_step_lr_by_hand():
    # 0.001 until epoch 4, 0.0001 from epoch 5, 0.00001 from epoch 10 (decay points 5, 10)
    assert step_lr(0.001, 0, [5, 10]) == pytest.approx(1e-3)
    assert step_lr(0.001, 4, [5, 10]) == pytest.approx(1e-3)
    assert step_lr(0.001, 5, [5, 10]) == pytest.approx(1e-4)
    assert step_lr(0.001, 9, [5, 10]) == pytest.approx(1e-4)
    assert step_lr(0.001, 10, [5, 10]) == pytest.approx(1e-5)
    assert step_lr(0.001, 29, [5, 10]) == pytest.approx(1e-5)
    assert step_lr(0.2, 3, [1, 2, 3], factor=0.5) == pytest.approx(0.025)
    assert step_lr(0.2, 7, []) == 0.2


def test_step_schedule_sets_every_group_by_its_multiplier():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [w], "lr_mult": 20.0}], lr=1.0)
    sched = StepSchedule(0.001, [5, 10], 0.1)
    for epoch, expected in ((0, 0.02), (5, 0.002), (12, 0.0002)):
        plan = sched.epoch_start(epoch, 0, opt)
        assert plan.lr == pytest.approx(expected / 20)
        assert opt.param_groups[0]["lr"] == pytest.approx(expected)
        assert sched.step(123, opt) == pytest.approx(expected / 20)
        assert opt.param_groups[0]["lr"] == pytest.approx(expected)


def test_every_lr_schedule_value_builds(tmp_path):
    cfg = rca()
    net = get_family("cam").build(cfg, 21)
    kinds = set()
    for value in LR_SCHEDULES:
        cfg.train.lr_schedule = value
        kinds.add(type(optimizer_and_schedule(net, cfg, total_steps=10)[1]).__name__)
    assert len(kinds) == len(LR_SCHEDULES)
    with pytest.raises(ConfigError, match="lr_schedule"):
        rca("train.lr_schedule=cosine")
    with pytest.raises(ConfigError, match="lr_decay_epochs"):
        rca("train.lr_decay_epochs=[10,5]")
    with pytest.raises(ConfigError, match="lr_decay_factor"):
        rca("train.lr_decay_factor=0")


def test_official_numbers():
    cfg = load_experiment("cam_voc_rca_official", ["data.root=unused"])
    t, a = cfg.train, cfg.train.augment
    assert (cfg.model.encoder, cfg.model.pretrained, cfg.data.image_size) == ("vgg16", True, 368)
    assert (t.optimizer, t.momentum, t.nesterov, t.weight_decay) == ("sgd", 0.9, True, 5e-4)
    assert (t.lr, t.head_lr_mult, t.bias_lr_mult) == (0.001, 10.0, 2.0)
    assert (t.lr_schedule, list(t.lr_decay_epochs), t.lr_decay_factor) == ("step", [5, 10], 0.1)
    assert (t.batch_size, t.epochs, t.warmup_epochs) == (8, 30, 0)
    assert (cfg.addons["rca"].enabled, cfg.addons["rca"].contrast_start_epoch) == (False, 2)
    assert (a.geometry, a.hflip_prob, a.vflip_prob, a.transpose_prob, a.grayscale_prob) == ("square", 0.0, 0.0, 0.0, 0.0)
    assert (tuple(a.brightness), tuple(a.contrast), tuple(a.saturation), a.hue) == (
        (0.7, 1.3), (0.7, 1.3), (0.7, 1.3), 0.1)


@pytest.mark.parametrize("addon", [[], ["addons.rca.enabled=true", "addons.rca.score_threshold=0.0"]],
                         ids=["base", "with_rca"])
def test_two_sgd_steps_at_the_official_learning_rates(tmp_path, addon):
    root = tmp_path / "voc"
    make_voc(root, n=2)
    cfg = rca(*addon, root=root)
    index = build_index(cfg.data, cfg.data.train_split)
    views = TrainingViews(index, cfg.data.image_size, cfg.train.augment, seed=cfg.seed,
                          patch_size=get_family(cfg.model.family).patch_size)
    batch = default_collate([views[0], views[1]])
    family = get_family(cfg.model.family)
    torch.manual_seed(0)
    core = family.build(cfg, index.num_classes)
    core.classifier.register_parameter("bias", torch.nn.Parameter(torch.zeros(index.num_classes - 1)))
    opt, sched = optimizer_and_schedule(core, cfg, total_steps=2)
    assert isinstance(sched, StepSchedule) and isinstance(opt, torch.optim.SGD)
    assert all(g["nesterov"] and g["momentum"] == 0.9 and g["weight_decay"] == 5e-4 for g in opt.param_groups)
    n_params = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_params == sum(p.numel() for p in core.parameters())  # every parameter in exactly one group
    expected = {0: {"head": 1e-2, "head_bias": 2e-2, "encoder": 1e-3, "encoder_bias": 2e-3},
                5: {"head": 1e-3, "head_bias": 2e-3, "encoder": 1e-4, "encoder_bias": 2e-4}}
    before = [p.detach().clone() for p in core.parameters()]
    for step, epoch in enumerate((0, 5)):  # one step in the first epoch, one after the first decay
        sched.epoch_start(epoch, step, opt)
        sched.step(step, opt)
        assert {g["name"]: g["lr"] for g in opt.param_groups} == pytest.approx(expected[epoch])
        loss, parts = family.loss(core, core, batch, cfg, epoch)
        assert torch.isfinite(loss)
        if addon:  # L_RM off before epoch 2 (train.py:101), on after
            assert (float(parts["rca_rm"]) > 0) == (epoch >= 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, core.parameters()))


def test_vgg16_reads_conv5_at_stride_16_and_refuses_stride_8():
    from tagseg.models.encoder import PatchEncoder

    enc = PatchEncoder("vgg16", pretrained=False, image_size=64, output_stride=16)
    assert not enc.dilated and enc(torch.rand(1, 3, 64, 64)).shape == (1, 512, 4, 4)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in enc.modules()) == 13  # all of VGG-16's convs
    with pytest.raises(ConfigError, match="no dilated variant"):
        PatchEncoder("vgg16", pretrained=False, image_size=64, output_stride=8)


@pytest.mark.slow
def test_the_loop_logs_the_step_decay(tmp_path):
    import json

    from tagseg.classify.trainer import Trainer

    root = tmp_path / "voc"
    make_voc(root, n=2)
    cfg = rca("train.epochs=2", "train.lr_decay_epochs=[1]", root=root)
    Trainer(cfg, tmp_path / "run", show_progress=False).fit()
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [h["lr"] for h in history] == pytest.approx([1e-3, 1e-4])
