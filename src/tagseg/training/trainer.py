"""The tag classifier's training task (any model family) on the shared engine.

:class:`Trainer` builds the task — images with their tags and views (:class:`TrainingViews`),
the family's network and loss, Adam with a head and an encoder group, the warm-up/unfreeze
phases — and hands it to :func:`tagseg.engine.loop.fit`, which owns the loop, checkpoints,
resume, logging and DDP.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import torch

from tagseg.config import ExperimentConfig, config_to_yaml, to_dict
from tagseg.data.build import build_index
from tagseg.data.views import TrainingViews
from tagseg.engine import loop
from tagseg.engine.distributed import DistInfo, per_process_batch
from tagseg.engine.loop import seed_everything  # noqa: F401  (kept importable from here)
from tagseg.engine.resume import check_resumable, truncate_history  # noqa: F401  (kept importable from here)
from tagseg.engine.phases import is_batchnorm
from tagseg.engine.schedule import PhaseSchedule, PolySchedule, Schedule
from tagseg.engine.task import SelectFn, Task, loop_options
from tagseg.engine.threads import cpu_threads  # noqa: F401  (kept importable from here)
from tagseg.engine.threads import loader_workers
from tagseg.experiment import validate_experiment
from tagseg.methods.families import get_family
from tagseg.training.selection import selection_hook

# Settings that may change between an interrupted run and its resumption.
RESUME_MAY_CHANGE = ("train.epochs", "train.cpu_threads", "train.log_every", "train.keep_checkpoints",
                     "data.num_workers", "device",
                     "train.precision", "train.compile", "train.channels_last", "pseudo", "refine")


def model_metadata(cfg: ExperimentConfig, class_names: tuple[str, ...], palette: list[int]) -> dict:
    return {"format": get_family(cfg.model.family).format, "class_names": list(class_names), "palette": palette,
            "config": config_to_yaml(cfg)}


def optimizer_and_schedule(core: torch.nn.Module, cfg: ExperimentConfig, total_steps: int
                            ) -> tuple[torch.optim.Optimizer, Schedule]:
    """Adam with the warm-up/unfreeze phases (tagseg's recipe), or SGD with a per-step poly decay
    from the first step, the head at ``head_lr_mult`` × lr and, with ``model.bn=frozen``, the
    encoder's BatchNorm fixed (statistics and affine weights; the official CAM recipe).
    ``total_steps``: optimizer steps of the whole run (poly only)."""
    t = cfg.train
    head, enc = core.head_parameters(), list(core.encoder.parameters())
    if t.optimizer == "adam":
        optimizer = torch.optim.Adam([{"params": head, "name": "head"}, {"params": enc, "name": "encoder"}],
                                     lr=t.lr, weight_decay=t.weight_decay)
    else:
        optimizer = torch.optim.SGD([{"params": head, "name": "head", "lr_mult": t.head_lr_mult},
                                     {"params": enc, "name": "encoder"}],
                                    lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.lr_schedule == "phases":
        return optimizer, PhaseSchedule(core, t, cfg.model.bn)
    frozen = []
    if cfg.model.bn == "frozen":
        frozen = [m for m in core.encoder.modules() if is_batchnorm(m)]
        for m in frozen:
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)
    return optimizer, PolySchedule(t.lr, total_steps, t.poly_power, frozen)


def classifier_task(cfg: ExperimentConfig, select_epoch: Optional[SelectFn] = None
                    ) -> Callable[[DistInfo, torch.device], Task]:
    """The engine task of ``cfg``: its family's network and loss on ``data.train_split``."""

    def build(info: DistInfo, device: torch.device) -> Task:
        index = build_index(cfg.data, cfg.data.train_split).require_nonempty()
        dataset = TrainingViews(index, cfg.data.image_size, cfg.train.augment, seed=cfg.seed,
                                equivariance=cfg.method.et_weight > 0, crop_prob=cfg.method.et_crop_prob,
                                crop_size=cfg.method.et_crop_size)
        family = get_family(cfg.model.family)
        core = family.build(cfg, index.num_classes).to(device)
        t = cfg.train
        batch = per_process_batch(t.batch_size, info.world_size)
        optimizer, schedule = optimizer_and_schedule(core, cfg, math.ceil(len(dataset) / t.batch_size) * t.epochs)
        return Task(model=core, dataset=dataset,
                    loss=lambda model, core, batch, epoch: family.loss(model, core, batch, cfg, epoch),
                    optimizer=optimizer, schedule=schedule,
                    metadata=lambda: model_metadata(cfg, index.class_names, index.palette),
                    config=to_dict(cfg), config_yaml=config_to_yaml(cfg), epochs=t.epochs,
                    batch_size=batch, num_workers=cfg.data.num_workers,
                    seed=cfg.seed, resume_may_change=RESUME_MAY_CHANGE, select_epoch=select_epoch, **loop_options(t))

    return build


class Trainer:
    """Train ``cfg`` into ``run_dir`` (config.yaml, checkpoints/, tb/, history.jsonl, model.safetensors).

    select_epoch: optional best-epoch hook (core, 0-based epoch) -> score; default: the last epoch.
    """

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path, resume: bool = False,
                 show_progress: bool = True, select_epoch: Optional[SelectFn] = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.show_progress = show_progress
        self.select_epoch = select_epoch

    def fit(self, stop_after_epoch: Optional[int] = None) -> Path:
        """Train until ``train.epochs`` (or stop after ``stop_after_epoch`` finished epochs, for
        splitting a run); return the path of the final model (or of the last checkpoint)."""
        cfg = validate_experiment(self.cfg)  # the family, the add-on sections (typed here) and the rest
        cfg.data.num_workers = loader_workers(cfg.data.num_workers)
        select = self.select_epoch if self.select_epoch is not None else selection_hook(cfg)
        return loop.fit(classifier_task(cfg, select), self.run_dir, seed=cfg.seed, device=cfg.device,
                        resume=self.resume, show_progress=self.show_progress, stop_after_epoch=stop_after_epoch,
                        threads=(cfg.train.cpu_threads, cfg.data.num_workers))
