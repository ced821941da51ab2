"""Warm-up then fine-tuning (METHODS.md §1, "Schedule").

Works with any model that has an ``encoder`` exposing ``block_groups()`` and ``final_norm()``
(see :class:`tagseg.models.encoder.PatchEncoder`).

Warm-up epochs: the encoder is frozen (eval mode, no gradient), head at ``warmup_lr``.
Afterwards: the last ``unfreeze_blocks`` encoder blocks and the final norm train too, all at
``lr``. The learning rate is a pure function of the epoch, so resuming needs no scheduler state.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tagseg.config import TrainConfig


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


def apply_phase(model: nn.Module, cfg: TrainConfig, phase: Phase) -> list[nn.Module]:
    """Set requires_grad for ``phase``; return the encoder modules that stay frozen (keep them in eval mode)."""
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    trainable = trainable_encoder_modules(model, cfg.unfreeze_blocks) if phase.encoder_trainable else []
    for m in trainable:
        for p in m.parameters():
            p.requires_grad_(True)
    return [m for m in model.encoder.modules() if not any(p.requires_grad for p in m.parameters(recurse=False))
            and len(list(m.children())) == 0]
