"""What a trainable network gives the engine: model, data, loss, optimizer, schedule, metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from tagseg.engine.schedule import Schedule
from tagseg.runner.manifest import ManifestInfo

# (model to differentiate through: the core or its DDP wrapper, core, batch on the device, 0-based epoch)
#   -> (total loss, detached parts by name)
LossFn = Callable[[nn.Module, nn.Module, dict, int], tuple[torch.Tensor, dict[str, torch.Tensor]]]
# (core, 0-based epoch) -> score of the epoch just trained (higher is better), or None to skip the
# epoch; an optional ``description`` attribute (str) names the metric in <run>/selection.json
SelectFn = Callable[[nn.Module, int], Optional[float]]


@dataclass
class Task:
    """One training job, built by the task after the engine has seeded the RNGs and chosen the device.

    model: the core network on the device; dataset: items collated into dict batches (its
    ``set_epoch(epoch)`` is called when present); config: the run's configuration as a nested
    dict (stored in every checkpoint; on resume the keys under ``resume_keys`` are compared,
    except ``resume_may_change``);
    config_yaml: written to ``<run>/config.yaml``; metadata: () -> the final model file's
    metadata. precision / compile / channels_last: speed options (:mod:`tagseg.engine.precision`).
    select_epoch: the best-epoch hook (None = the last epoch is the model); the
    model's own ``on_epoch_start(epoch)`` / ``on_epoch_end(epoch)`` are called when present.
    """

    model: nn.Module
    dataset: Dataset
    loss: LossFn
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    metadata: Callable[[], dict[str, Any]]
    config: dict
    config_yaml: str
    epochs: int
    batch_size: int
    num_workers: int
    seed: int
    resume_may_change: Sequence[str] = ()
    resume_keys: Sequence[str] = ()  # the keys (or sections) that decide the result; empty = all
    manifest: Optional[ManifestInfo] = None  # written as <run>/manifest.json with the final model
    amp: bool = True  # the older switch: False = fp32 (see tagseg.engine.precision.resolve_precision)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (autocast; fp16 adds a gradient scaler)
    compile: bool = False  # torch.compile the forward pass (the saved weights stay the core's)
    channels_last: bool = False  # NHWC weights and image batches (CNN backbones on GPU)
    grad_clip: float = 0.0
    log_every: int = 10
    keep_checkpoints: int = 2
    total_name: str = "total"  # name of the total loss in logs and history
    persistent_workers: bool = True  # keep data-loader workers over epochs (when num_workers > 0)
    select_epoch: Optional[SelectFn] = None
    # per-item sampling weights (len(dataset),): each epoch draws len(dataset) items with replacement,
    # P(i) proportional to the weight (tagseg.engine.sampling); None = every item once, shuffled
    sample_weights: Optional[Sequence[float]] = None


LOOP_OPTIONS = ("amp", "precision", "compile", "channels_last", "grad_clip", "log_every", "keep_checkpoints")


def loop_options(train_cfg: Any) -> dict[str, Any]:
    """The engine settings a ``train`` config section shares with :class:`Task` (precision, compile,
    channels-last, clipping, logging, checkpoints kept), as keyword arguments."""
    return {name: getattr(train_cfg, name) for name in LOOP_OPTIONS}
