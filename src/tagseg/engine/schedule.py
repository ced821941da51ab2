"""Learning-rate schedules of the engine: per-epoch phases, a per-step poly decay or a per-epoch step decay.

A schedule sets the optimizer's learning rates. ``epoch_start`` runs before each epoch and
returns an :class:`EpochPlan` (phase name, modules to keep in eval mode, current lr);
``step`` runs before each optimizer step and returns the lr of that step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch
from torch import nn

from tagseg.config import TrainConfig
from tagseg.engine.phases import apply_phase, phase_for_epoch


@dataclass
class EpochPlan:
    """name: phase name or None (one phase); frozen: modules kept in eval mode; lr: current lr.
    A change of ``name`` re-wraps the model for DDP (its trainable set changed)."""

    name: str | None
    lr: float
    frozen: Sequence[nn.Module] = field(default_factory=list)


class Schedule(Protocol):
    lr_key: str  # name of the learning rate in history.jsonl / TensorBoard

    def epoch_start(self, epoch: int, global_step: int, optimizer: torch.optim.Optimizer) -> EpochPlan: ...

    def step(self, global_step: int, optimizer: torch.optim.Optimizer) -> float: ...


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group at ``lr`` × its ``lr_mult`` (default 1)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = 0.9) -> float:
    """DeepLab's poly schedule: base_lr · (1 − step/total_steps)^power (step clipped to [0, total])."""
    if total_steps <= 0:
        return base_lr
    frac = min(max(step, 0), total_steps) / total_steps
    return base_lr * (1.0 - frac) ** power


class PhaseSchedule:
    """Warm-up with the encoder frozen, then the last blocks (METHODS.md §1, "Schedule"): the lr
    is constant within an epoch and a pure function of it (no scheduler state to resume)."""

    lr_key = "lr"

    def __init__(self, model: nn.Module, cfg: TrainConfig, bn: str = "adapt", frozen_dropout: bool = False) -> None:
        """bn: the BatchNorm mode of the encoder, frozen | adapt | train; frozen_dropout: dropout layers
        of frozen parts stay active (see :mod:`tagseg.engine.phases`)."""
        self.model, self.cfg, self.lr, self.bn = model, cfg, cfg.lr, bn
        self.frozen_dropout = frozen_dropout

    def epoch_start(self, epoch: int, global_step: int, optimizer: torch.optim.Optimizer) -> EpochPlan:
        phase = phase_for_epoch(self.cfg, epoch)
        frozen = apply_phase(self.model, self.cfg, phase, self.bn, self.frozen_dropout)
        for group in optimizer.param_groups:
            group["lr"] = phase.lr
        self.lr = phase.lr
        return EpochPlan(phase.name, phase.lr, frozen)

    def step(self, global_step: int, optimizer: torch.optim.Optimizer) -> float:
        return self.lr


class PolySchedule:
    """Poly decay per step over ``total_steps``; groups scaled by their ``lr_mult``; ``frozen``
    modules (e.g. BatchNorm layers with fixed statistics) stay in eval mode every epoch."""

    lr_key = "lr_last"

    def __init__(self, base_lr: float, total_steps: int, power: float = 0.9,
                 frozen: Sequence[nn.Module] = ()) -> None:
        self.base_lr, self.total_steps, self.power, self.frozen = base_lr, total_steps, power, list(frozen)

    def epoch_start(self, epoch: int, global_step: int, optimizer: torch.optim.Optimizer) -> EpochPlan:
        return EpochPlan(None, poly_lr(self.base_lr, global_step, self.total_steps, self.power), self.frozen)

    def step(self, global_step: int, optimizer: torch.optim.Optimizer) -> float:
        lr = poly_lr(self.base_lr, global_step, self.total_steps, self.power)
        set_lr(optimizer, lr)
        return lr


def step_lr(base_lr: float, epoch: int, decay_epochs: Sequence[int], factor: float = 0.1) -> float:
    """Step decay: base_lr · factor^n, n = how many of ``decay_epochs`` (0-based) are <= ``epoch``.
    RCA's ``my_optim.reduce_lr`` multiplies every group's lr by the factor at the start of each listed epoch."""
    return base_lr * factor ** sum(1 for e in decay_epochs if e <= epoch)


class StepSchedule:
    """Step decay per epoch (lr constant within an epoch, a pure function of it); groups scaled by their
    ``lr_mult``; ``frozen`` modules stay in eval mode every epoch."""

    lr_key = "lr"

    def __init__(self, base_lr: float, decay_epochs: Sequence[int], factor: float = 0.1,
                 frozen: Sequence[nn.Module] = ()) -> None:
        self.base_lr, self.decay_epochs, self.factor, self.frozen = base_lr, list(decay_epochs), factor, list(frozen)
        self.lr = base_lr

    def epoch_start(self, epoch: int, global_step: int, optimizer: torch.optim.Optimizer) -> EpochPlan:
        self.lr = step_lr(self.base_lr, epoch, self.decay_epochs, self.factor)
        set_lr(optimizer, self.lr)
        return EpochPlan(None, self.lr, self.frozen)

    def step(self, global_step: int, optimizer: torch.optim.Optimizer) -> float:
        set_lr(optimizer, self.lr)
        return self.lr
