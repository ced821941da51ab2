"""The tag classifier's training task (any model family) on the shared engine.

:class:`Trainer` builds the task — images with their tags and views (:class:`TrainingViews`),
the family's network and loss, Adam with a head and an encoder group, the warm-up/unfreeze
phases — and hands it to :func:`tagseg.engine.loop.fit`, which owns the loop, checkpoints,
resume, logging and DDP.
"""

from __future__ import annotations

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
from tagseg.engine.schedule import PhaseSchedule
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
        head, enc = core.head_parameters(), list(core.encoder.parameters())
        optimizer = torch.optim.Adam([{"params": head, "name": "head"}, {"params": enc, "name": "encoder"}],
                                     lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        t = cfg.train
        return Task(model=core, dataset=dataset,
                    loss=lambda model, core, batch, epoch: family.loss(model, core, batch, cfg, epoch),
                    optimizer=optimizer, schedule=PhaseSchedule(core, t, cfg.model.bn),
                    metadata=lambda: model_metadata(cfg, index.class_names, index.palette),
                    config=to_dict(cfg), config_yaml=config_to_yaml(cfg), epochs=t.epochs,
                    batch_size=per_process_batch(t.batch_size, info.world_size), num_workers=cfg.data.num_workers,
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
