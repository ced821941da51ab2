"""The segmentation network's training task on the shared engine.

Cross-entropy on pseudo-masks (255 ignored), SGD with momentum (or AdamW), poly learning rate
per iteration, the head at ``head_lr_mult`` × lr, optionally the backbone's BatchNorm fixed.
:func:`tagseg.engine.loop.fit` runs the loop, checkpoints, resume (refused under another
configuration), logging and DDP.
"""

from __future__ import annotations

import math
import sys
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tagseg.config import config_to_yaml, to_dict
from tagseg.data.build import build_index
from tagseg.data.classes import IGNORE_INDEX
from tagseg.engine.distributed import DistInfo, per_process_batch
from tagseg.engine.sampling import repeat_factors
from tagseg.engine.schedule import PolySchedule
from tagseg.engine.task import SelectFn, Task, loop_options
from tagseg.engine.trainer import StageTrainer
from tagseg.segment.config import SegmentExperimentConfig, SegTrainConfig
from tagseg.segment.data import SegmentationTrainSet, choose_mask_folder, resolve_mask_paths
from tagseg.segment.inference import model_metadata
from tagseg.segment.models import SegmentationNet, build_segmenter, default_rates, unreached_rates
from tagseg.runner import ManifestInfo
from tagseg.segment.selection import segmentation_selection_hook

# The sections whose settings decide what training computes, compared when a run is resumed.
RESUME_KEYS = ("seed", "data", "segment", "model", "train", "augment")
# Settings among them that may change between an interrupted run and its resumption (not train.epochs: the
# poly schedule runs over all epochs' steps).
RESUME_MAY_CHANGE = ("train.log_every", "train.keep_checkpoints", "data.num_workers",
                     "train.precision", "train.compile", "train.channels_last")


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy over the pixels whose target is not ``ignore_index``.

    logits (B, K, H, W), target int64 (B, H, W). A batch without any valid pixel gives 0
    (still attached to the graph, so backward works) instead of NaN.
    """
    valid = target != ignore_index
    total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return total / valid.sum().clamp(min=1)


def build_optimizer(model: SegmentationNet, cfg: SegTrainConfig) -> torch.optim.Optimizer:
    """Two parameter groups, backbone (lr) and head (head_lr_mult · lr); SGD+momentum or AdamW."""
    groups = [{"params": model.backbone_parameters(), "name": "backbone", "lr_mult": 1.0},
              {"params": model.head_parameters(), "name": "head", "lr_mult": cfg.head_lr_mult}]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def freeze_batchnorm(module: nn.Module) -> list[nn.Module]:
    """Fix the BatchNorm layers of ``module`` (no statistics updates, no affine gradients)."""
    frozen = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    return frozen


def _loss(model: nn.Module, core: nn.Module, batch: dict, epoch: int) -> tuple[torch.Tensor, dict]:
    return segmentation_loss(model(batch["image"]), batch["mask"]), {}


def segmentation_task(cfg: SegmentExperimentConfig, select_epoch: Optional[SelectFn] = None
                      ) -> Callable[[DistInfo, torch.device], Task]:
    """The engine task of ``cfg``: DeepLab on the masks of ``segment.masks_dir``."""

    def build(info: DistInfo, device: torch.device) -> Task:
        tcfg = cfg.train
        index = build_index(cfg.data, cfg.data.train_split).require_nonempty()
        folder, kind = choose_mask_folder(cfg.segment.masks_dir, cfg.segment.mask_kind)
        masks = resolve_mask_paths(index, folder)
        if info.is_main:
            print(f"training masks: {folder} ({kind}; segment.mask_kind={cfg.segment.mask_kind})")
        core = build_segmenter(cfg.model, index.num_classes, cfg.augment.crop_size)
        rates = tuple(cfg.model.aspp_rates) or default_rates(cfg.model.head, cfg.model.output_stride)
        dead = unreached_rates(rates, cfg.augment.crop_size, core.size_divisor)
        if dead and info.is_main:
            print(f"warning: ASPP rates {dead} of {list(rates)} reach beyond the {cfg.augment.crop_size}-px crop's "
                  f"feature map: those branches train as 1×1 convolutions and read image content only at "
                  f"inference; scale model.aspp_rates with the crop (e.g. ×crop/513)", file=sys.stderr)
        pad_value = core.backbone.mean.flatten().tolist()
        dataset = SegmentationTrainSet(index, masks, cfg.augment, pad_value=pad_value, seed=cfg.seed)
        if info.enabled and device.type == "cuda":
            core = nn.SyncBatchNorm.convert_sync_batchnorm(core)
        frozen_bn = freeze_batchnorm(core.backbone) if tcfg.freeze_backbone_bn else []
        core = core.to(device)
        optimizer = build_optimizer(core, tcfg)
        batch = per_process_batch(tcfg.batch_size, info.world_size)  # train.batch_size is the global batch
        total_steps = math.ceil(len(dataset) / (batch * info.world_size)) * tcfg.epochs
        weights = None
        if tcfg.sampling == "repeat_factor":
            weights = repeat_factors(np.stack([rec.labels for rec in index.records]), tcfg.repeat_threshold)
            if info.is_main:
                print(f"repeat-factor sampling (threshold {tcfg.repeat_threshold}): {int((weights > 1).sum())} of "
                      f"{len(weights)} images oversampled, factors 1-{weights.max():.2f}")
        return Task(model=core, dataset=dataset, loss=lambda *a: _loss(*a), optimizer=optimizer,
                    schedule=PolySchedule(tcfg.lr, total_steps, tcfg.poly_power, frozen_bn),
                    metadata=lambda: {**model_metadata(cfg, index.class_names, index.palette),
                                      "training_masks": folder, "training_masks_kind": kind},
                    config=to_dict(cfg), config_yaml=config_to_yaml(cfg), epochs=tcfg.epochs,
                    batch_size=batch, num_workers=cfg.data.num_workers, seed=cfg.seed,
                    resume_may_change=RESUME_MAY_CHANGE, resume_keys=RESUME_KEYS, total_name="loss", select_epoch=select_epoch,
                    manifest=ManifestInfo(stage="segment", config=cfg, split=cfg.data.train_split,
                                          input=cfg.segment.masks_dir,
                                          settings={"segment": cfg.segment, "model": cfg.model, "train": tcfg}),
                    sample_weights=None if weights is None else weights.tolist(),
                    **loop_options(tcfg))

    return build


class SegmentationTrainer(StageTrainer):
    """The segmentation network's trainer (:class:`tagseg.engine.trainer.StageTrainer`): trains
    :func:`segmentation_task`; default hook: :func:`segmentation_selection_hook`."""

    def default_selection(self, cfg: SegmentExperimentConfig) -> Optional[SelectFn]:
        return segmentation_selection_hook(cfg)

    def task(self, cfg: SegmentExperimentConfig, select: Optional[SelectFn]) -> Callable:
        return segmentation_task(cfg, select)
