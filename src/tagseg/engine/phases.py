"""Warm-up then fine-tuning (METHODS.md §1, "Schedule").

Works with any model that has an ``encoder`` exposing ``block_groups()`` and ``final_norm()``
(see :class:`tagseg.models.encoder.PatchEncoder`).

Warm-up epochs: the encoder is frozen (no gradient), head at ``warmup_lr``. Afterwards: the
last ``unfreeze_blocks`` encoder blocks and the final norm train too, all at ``lr``. The learning
rate is a pure function of the epoch, so resuming needs no scheduler state.

BatchNorm (``model.bn``), for every BatchNorm layer of the encoder, nested ones included (timm's
``BatchNormAct2d`` has child modules, so "every leaf in eval mode" misses it):

- ``frozen``: eval mode in every phase: the running statistics (and ``num_batches_tracked``)
  never change; the affine weights train only inside unfrozen blocks.
- ``adapt``: in frozen parts the running statistics follow the training images (train mode) over
  fixed affine weights; unfrozen blocks train as usual.
- ``train``: like ``adapt``, and the affine weights train everywhere, in every phase.

Dropout (``model.frozen_dropout``): with ``frozen_dropout`` the ``nn.Dropout`` layers of frozen parts
stay in train mode, as Keras' dropout in the official ViT-PCM (freezing a Keras layer only stops
its gradient; ``training=True`` still reaches its dropout), so ViT dropout is active in all blocks
throughout; without it a frozen part is entirely in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tagseg.config import BN_MODES, TrainConfig



@dataclass(frozen=True)
class Phase:
    name: str  # 'warmup' | 'finetune'
    lr: float
    encoder_trainable: bool


def phase_for_epoch(cfg: TrainConfig, epoch: int) -> Phase:
    if epoch < cfg.warmup_epochs:
        return Phase("warmup", cfg.warmup_lr, False)
    return Phase("finetune", cfg.lr, cfg.unfreeze_blocks != 0)


def trainable_encoder_modules(model: nn.Module, unfreeze_blocks: int) -> list[nn.Module]:
    """The encoder modules trained after warm-up: the whole encoder (-1) or the last N blocks + norm."""
    if unfreeze_blocks < 0:
        return [model.encoder]
    if unfreeze_blocks == 0:
        return []
    return model.encoder.block_groups()[-unfreeze_blocks:] + model.encoder.final_norm()


def is_batchnorm(module: nn.Module) -> bool:
    """BatchNorm of any kind (timm's BatchNormAct2d and SyncBatchNorm included: they subclass it)."""
    return isinstance(module, _BatchNorm)


def apply_phase(model: nn.Module, cfg: TrainConfig, phase: Phase, bn: str = "frozen",
                frozen_dropout: bool = False) -> list[nn.Module]:
    """Set requires_grad for ``phase`` and the BatchNorm mode ``bn`` (frozen | adapt | train);
    return the encoder modules to keep in eval mode this epoch (each one's whole subtree).

    Frozen parts: every leaf module (dropout, ...) is returned, and so is every BatchNorm layer
    under ``bn='frozen'`` (in unfrozen blocks too). Under ``adapt``/``train`` no BatchNorm layer
    is returned, so the running statistics update; under ``train`` their affine weights train.
    ``frozen_dropout``: ``nn.Dropout`` layers with p > 0 are never returned (they drop in every block;
    p = 0 ones stay in eval mode so a frozen encoder without dropout is still recognised as frozen).
    """
    if bn not in BN_MODES:
        raise ValueError(f"bn={bn!r}: choose one of {BN_MODES}")
    encoder = model.encoder
    for p in encoder.parameters():
        p.requires_grad_(False)
    trainable = trainable_encoder_modules(model, cfg.unfreeze_blocks) if phase.encoder_trainable else []
    for m in trainable:
        for p in m.parameters():
            p.requires_grad_(True)
    norms = [m for m in encoder.modules() if is_batchnorm(m)]
    if bn == "train":
        for m in norms:
            for p in m.parameters(recurse=False):
                p.requires_grad_(True)
    in_trainable = {id(sub) for m in trainable for sub in m.modules()}
    norm_children = {id(sub) for m in norms for sub in m.modules()}
    frozen_leaves = [m for m in encoder.modules()
                     if next(m.children(), None) is None and id(m) not in in_trainable
                     and not is_batchnorm(m) and id(m) not in norm_children
                     and not (frozen_dropout and isinstance(m, nn.Dropout) and m.p > 0)]
    # a BatchNorm's own children (activation, dropout) follow the layer
    frozen_norms = norms if bn == "frozen" else []
    frozen_norm_children = [] if bn == "frozen" else [
        sub for m in norms if id(m) not in in_trainable for sub in m.modules() if sub is not m]
    return frozen_leaves + frozen_norms + frozen_norm_children
