"""The refine stage end to end for one run: (labels -> head training ->) refined masks."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from tagseg.config import REFINE_METHODS, TRAINED_REFINE_METHODS, ExperimentConfig
from tagseg.data.build import build_index
from tagseg.engine import loop
from tagseg.errors import ConfigError
from tagseg.refine.stage import run_refine
from tagseg.refine.train import load_refine_net, make_seed_labels, refine_task
from tagseg.runner import RunStats

METHODS = REFINE_METHODS


def refine_dir(run: Path, method: str) -> Path:
    """``<run>/refine/<method>``: the method's labels, network and masks."""
    if method not in METHODS:
        raise ConfigError(f"unknown refine method {method!r}: choose irn, psa or par")
    return Path(run) / "refine" / method


def masks_dir(run: Path, method: str, split: str) -> Path:
    return refine_dir(run, method) / split / "masks"


def train_refine_net(model: nn.Module, cfg: ExperimentConfig, run: Path, method: str, family: str, device,
                     resume: bool = False, progress: bool = True) -> Path:
    """Labels of the training split, then the head, into ``<run>/refine/<method>/``; returns its model file."""
    out = refine_dir(run, method)
    split = cfg.data.train_split
    index = build_index(cfg.data, split)
    make_seed_labels(model, index, out / "labels" / split, cfg, method, family, device, progress=progress)
    return loop.fit(refine_task(cfg, method, lambda: copy.deepcopy(model.encoder), index, out / "labels" / split),
                    out, seed=cfg.seed, device=str(device), resume=resume, show_progress=progress)


def refine_run(model: nn.Module, cfg: ExperimentConfig, run: Path, method: str, family: str, split: str,
               device="cpu", shard: tuple[int, int] = (0, 1), overwrite: bool = False, resume: bool = False,
               progress: bool = True, out: Optional[Path] = None, workers: int = 1,
               threads: Optional[int] = None) -> tuple[RunStats, Path]:
    """Refined masks of ``split``; trains the IRN / PSA head first when its model file is missing."""
    net, path = None, None
    if method in TRAINED_REFINE_METHODS:
        path = refine_dir(run, method) / "model.safetensors"
        if not path.is_file():
            path = train_refine_net(model, cfg, run, method, family, device, resume=resume, progress=progress)
        net = load_refine_net(model, cfg, path, method, device)
    out = Path(out) if out is not None else masks_dir(run, method, split).parent
    index = build_index(cfg.data, split)
    manifest: dict[str, Any] = {"run": run, "split": split, "config": cfg, "input": cfg.data.root}
    with torch.no_grad():
        stats = run_refine(model, index, out, cfg, method, family, device, net, shard=shard, overwrite=overwrite,
                           progress=progress, manifest=manifest, workers=workers,
                           model_path=Path(run) / "model.safetensors", net_path=path, threads=threads)
    return stats, out / "masks"
