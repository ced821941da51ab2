"""model.bn = frozen | adapt | train on real timm encoders with nested BatchNorm (BatchNormAct2d)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from tagseg.config import ModelConfig, TrainConfig, load_config
from tagseg.engine.phases import Phase, apply_phase
from tagseg.errors import ConfigError
from tagseg.models.patch_classifier import build_patch_classifier


def _net(encoder: str = "tf_efficientnet_lite0"):
    torch.manual_seed(0)
    return build_patch_classifier(ModelConfig(encoder=encoder, lstm_hidden=8, cnn_grid="dilated"), 4, 64)


def _bn_state(core) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in core.encoder.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def _bn_weights(core) -> dict[str, torch.Tensor]:
    return {f"{n}.{pn}": p.detach().clone() for n, m in core.encoder.named_modules() if isinstance(m, _BatchNorm)
            for pn, p in m.named_parameters(recurse=False)}


def _step(core, phase: Phase, bn: str, unfreeze: int = 1) -> None:
    """One training step as the engine runs it: phase applied, model in train mode, frozen set in eval."""
    cfg = TrainConfig(unfreeze_blocks=unfreeze)
    frozen = apply_phase(core, cfg, phase, bn)
    core.train()
    for m in frozen:
        m.eval()
    opt = torch.optim.SGD([p for p in core.parameters() if p.requires_grad], lr=0.1)
    out = core(torch.rand(2, 3, 64, 64))
    out.logits.float().square().mean().backward()
    opt.step()


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_lite0_has_nested_batchnorm():
    from timm.layers import BatchNormAct2d

    core = _net()
    nested = [m for m in core.encoder.modules() if isinstance(m, BatchNormAct2d)]
    assert len(nested) > 20 and all(next(m.children(), None) is not None for m in nested)


@pytest.mark.parametrize("encoder", ["tf_efficientnet_lite0", "test_resnet"])
def test_frozen_keeps_statistics_and_weights_in_warmup(encoder):
    core = _net(encoder)
    stats, weights = _bn_state(core), _bn_weights(core)
    _step(core, Phase("warmup", 1e-3, False), "frozen")
    assert not _changed(stats, _bn_state(core))
    assert not _changed(weights, _bn_weights(core))
    assert core.encoder_is_frozen()


@pytest.mark.parametrize("encoder", ["tf_efficientnet_lite0", "test_resnet"])
def test_adapt_updates_statistics_over_fixed_weights(encoder):
    core = _net(encoder)
    stats, weights = _bn_state(core), _bn_weights(core)
    _step(core, Phase("warmup", 1e-3, False), "adapt")
    changed = _changed(stats, _bn_state(core))
    assert changed == set(stats)  # every running mean / var / counter moved
    counters = [v for k, v in _bn_state(core).items() if k.endswith("num_batches_tracked")]
    assert all(int(c) == 1 for c in counters)
    assert not _changed(weights, _bn_weights(core))
    assert not core.encoder_is_frozen()  # train-mode BN: the training-pass grid is not reusable


def test_train_trains_batchnorm_weights_in_warmup():
    core = _net()
    stats, weights = _bn_state(core), _bn_weights(core)
    _step(core, Phase("warmup", 1e-3, False), "train")
    assert _changed(stats, _bn_state(core)) == set(stats)
    assert _changed(weights, _bn_weights(core))
    other = [p for n, p in core.encoder.named_parameters() if "bn" not in n]
    assert other and not any(p.requires_grad for p in other)  # convolutions stay frozen


def test_frozen_fixes_statistics_in_unfrozen_blocks_too():
    core = _net()
    last = core.encoder.block_groups()[-1]
    assert any(isinstance(m, _BatchNorm) for m in last.modules())
    stats, weights = _bn_state(core), _bn_weights(core)
    _step(core, Phase("finetune", 1e-4, True), "frozen", unfreeze=1)
    assert not _changed(stats, _bn_state(core))
    moved = _changed(weights, _bn_weights(core))
    assert moved
    prefix = "backbone." + [n for n, m in core.encoder.backbone.named_modules() if m is last][0]
    assert all(k.startswith(prefix) for k in moved)  # only the unfrozen block's affine weights train


def test_bn_key_is_checked_and_reaches_the_schedule():
    with pytest.raises(ConfigError, match="model.bn"):
        load_config("demo", ["model.bn=fixed"])
    from tagseg.engine.schedule import PhaseSchedule

    core = _net()
    sched = PhaseSchedule(core, TrainConfig(warmup_epochs=1, unfreeze_blocks=1), "frozen")
    opt = torch.optim.SGD(core.parameters(), lr=1.0)
    plan = sched.epoch_start(0, 0, opt)
    assert sum(isinstance(m, _BatchNorm) for m in plan.frozen) == sum(
        isinstance(m, _BatchNorm) for m in core.encoder.modules())


def test_segmentation_freeze_batchnorm_handles_nested_norms():
    from tagseg.segment.trainer import freeze_batchnorm

    core = _net()
    stats = _bn_state(core)
    frozen = freeze_batchnorm(core.encoder)
    core.train()
    for m in frozen:
        m.eval()
    core(torch.rand(2, 3, 64, 64))
    assert not _changed(stats, _bn_state(core))
