"""What every best-epoch hook (``SelectFn``, :mod:`tagseg.engine.task`) shares: which epochs it
scores, and scoring the network in eval mode while leaving each module's train/eval mode as it was."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


def scheduled(epoch: int, every: int, epochs: int) -> bool:
    """Score 0-based ``epoch`` when it ends a block of ``every`` epochs or is the last one."""
    return (epoch + 1) % every == 0 or epoch + 1 == epochs


@contextmanager
def evaluating(model: nn.Module) -> Iterator[torch.device]:
    """Run the body with ``model`` in eval mode and no gradients; yields the model's device.
    Every module's own mode is restored afterwards (a partly frozen network stays partly frozen)."""
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield next(model.parameters()).device
    finally:
        for m, mode in zip(model.modules(), modes):
            m.training = mode
