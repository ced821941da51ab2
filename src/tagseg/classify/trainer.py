"""The tag classifier's training task (any model family) on the shared engine.

:class:`Trainer` builds the task — images with their tags and views (:class:`TrainingViews`),
the family's network and loss, Adam with a head and an encoder group, the warm-up/unfreeze
phases — and hands it to :func:`tagseg.engine.loop.fit`, which owns the loop, checkpoints,
resume, logging and DDP.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch

from tagseg.classify.selection import selection_hook
from tagseg.config import ExperimentConfig, config_to_yaml, to_dict
from tagseg.data.build import build_index
from tagseg.data.views import TrainingViews
from tagseg.engine.distributed import DistInfo, per_process_batch
from tagseg.engine.phases import is_batchnorm
from tagseg.engine.schedule import PhaseSchedule, PolySchedule, Schedule, StepSchedule
from tagseg.engine.task import SelectFn, Task, loop_options
from tagseg.engine.threads import loader_workers
from tagseg.engine.trainer import StageTrainer
from tagseg.experiment import validate_experiment
from tagseg.methods.cam_objective import tag_frequencies
from tagseg.methods.families import get_family
from tagseg.runner import ManifestInfo

# The sections whose settings decide what training computes, compared when a run is resumed
# (pseudo-mask settings, the device and the name are not among them).
RESUME_KEYS = ("seed", "data", "model", "method", "cam", "addons", "train")
# Settings among them that may change between an interrupted run and its resumption.
RESUME_MAY_CHANGE = ("train.epochs", "train.cpu_threads", "train.log_every", "train.keep_checkpoints",
                     "data.num_workers", "train.precision", "train.compile", "train.channels_last")


def model_metadata(cfg: ExperimentConfig, class_names: tuple[str, ...], palette: list[int]) -> dict:
    return {"format": get_family(cfg.model.family).format, "class_names": list(class_names), "palette": palette,
            "config": config_to_yaml(cfg)}


def optimizer_and_schedule(core: torch.nn.Module, cfg: ExperimentConfig, total_steps: int
                            ) -> tuple[torch.optim.Optimizer, Schedule]:
    """Adam with the warm-up/unfreeze phases (tagseg's recipe), or SGD with a per-step poly decay
    (or a per-epoch step decay, ``lr_schedule=step``) from the first step, the head at ``head_lr_mult`` × lr and, with ``model.bn=frozen``, the
    encoder's BatchNorm fixed (statistics and affine weights; the official CAM recipe).
    ``total_steps``: optimizer steps of the whole run (poly only)."""
    t = cfg.train
    head, enc = core.head_parameters(), list(core.encoder.parameters())
    if t.optimizer == "adam":
        optimizer = torch.optim.Adam([{"params": head, "name": "head"}, {"params": enc, "name": "encoder"}],
                                     lr=t.lr, weight_decay=t.weight_decay)
    else:
        optimizer = torch.optim.SGD(sgd_groups(core, head, enc, t.head_lr_mult, t.bias_lr_mult),
                                    lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=t.nesterov)
    if t.lr_schedule == "phases":
        return optimizer, PhaseSchedule(core, t, cfg.model.bn, cfg.model.frozen_dropout)
    frozen = []
    if cfg.model.bn == "frozen":
        frozen = [m for m in core.encoder.modules() if is_batchnorm(m)]
        for m in frozen:
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)
    if t.lr_schedule == "step":
        return optimizer, StepSchedule(t.lr, t.lr_decay_epochs, t.lr_decay_factor, frozen)
    return optimizer, PolySchedule(t.lr, total_steps, t.poly_power, frozen)


def sgd_groups(core: torch.nn.Module, head: list[torch.nn.Parameter], enc: list[torch.nn.Parameter],
               head_lr_mult: float, bias_lr_mult: float) -> list[dict]:
    """SGD's parameter groups: head (``head_lr_mult``) and encoder (1); with ``bias_lr_mult`` != 1 each is
    split into weights and biases (parameters named ``*.bias``, at ``bias_lr_mult`` × the group's multiplier),
    as RCA's ``get_parameter_groups`` (1×, 2×, 10×, 20× lr); empty groups are left out."""
    if bias_lr_mult == 1.0:
        return [{"params": head, "name": "head", "lr_mult": head_lr_mult}, {"params": enc, "name": "encoder"}]
    biases = {id(p) for n, p in core.named_parameters() if n.rsplit(".", 1)[-1] == "bias"}
    groups = []
    for name, params, mult in (("head", head, head_lr_mult), ("encoder", enc, 1.0)):
        groups.append({"params": [p for p in params if id(p) not in biases], "name": name, "lr_mult": mult})
        groups.append({"params": [p for p in params if id(p) in biases], "name": f"{name}_bias",
                       "lr_mult": mult * bias_lr_mult})
    return [g for g in groups if g["params"]]


def classifier_task(cfg: ExperimentConfig, select_epoch: Optional[SelectFn] = None
                    ) -> Callable[[DistInfo, torch.device], Task]:
    """The engine task of ``cfg``: its family's network and loss on ``data.train_split``."""

    def build(info: DistInfo, device: torch.device) -> Task:
        index = build_index(cfg.data, cfg.data.train_split).require_nonempty()
        family = get_family(cfg.model.family)
        dataset = TrainingViews(index, cfg.data.image_size, cfg.train.augment, seed=cfg.seed,
                                equivariance=cfg.method.et_weight > 0, crop_prob=cfg.method.et_crop_prob,
                                crop_size=cfg.method.et_crop_size, patch_size=family.patch_size,
                                crop_corners=cfg.method.et_crop_corners, align_corners=cfg.method.et_align_corners)
        core = family.build(cfg, index.num_classes)
        if cfg.cam.class_prior == "tags" and getattr(core, "class_prior", None) is not None:
            core.set_class_prior(tag_frequencies(np.stack([r.labels for r in index.records])))
        core = core.to(device)
        t = cfg.train
        batch = per_process_batch(t.batch_size, info.world_size)
        optimizer, schedule = optimizer_and_schedule(core, cfg, math.ceil(len(dataset) / t.batch_size) * t.epochs)
        return Task(model=core, dataset=dataset,
                    loss=lambda model, core, batch, epoch: family.loss(model, core, batch, cfg, epoch),
                    optimizer=optimizer, schedule=schedule,
                    metadata=lambda: model_metadata(cfg, index.class_names, index.palette),
                    config=to_dict(cfg), config_yaml=config_to_yaml(cfg), epochs=t.epochs,
                    batch_size=batch, num_workers=cfg.data.num_workers,
                    seed=cfg.seed, resume_may_change=RESUME_MAY_CHANGE, resume_keys=RESUME_KEYS, select_epoch=select_epoch,
                    manifest=ManifestInfo(stage="classify", config=cfg, split=cfg.data.train_split, input=cfg.data.root,
                                          settings={"model": cfg.model, "method": cfg.method, "cam": cfg.cam,
                                                    "addons": cfg.addons, "train": cfg.train}),
                    **loop_options(t))

    return build


class Trainer(StageTrainer):
    """The tag classifier's trainer (:class:`tagseg.engine.trainer.StageTrainer`): checks the
    family and add-ons, then trains :func:`classifier_task`; default hook: :func:`selection_hook`."""

    def checked_config(self) -> ExperimentConfig:
        cfg = validate_experiment(self.cfg)  # the family, the add-on sections (typed here) and the rest
        cfg.data.num_workers = loader_workers(cfg.data.num_workers)
        return cfg

    def default_selection(self, cfg: ExperimentConfig) -> Optional[SelectFn]:
        return selection_hook(cfg)

    def task(self, cfg: ExperimentConfig, select: Optional[SelectFn]) -> Callable:
        return classifier_task(cfg, select)

    def threads(self, cfg: ExperimentConfig) -> tuple[int, int]:
        return cfg.train.cpu_threads, cfg.data.num_workers
