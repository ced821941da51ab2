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
from tagseg.refine.stage import refine_layout, refine_manifest, run_refine
from tagseg.refine.train import load_refine_net, make_seed_labels, refine_task
from tagseg.runner import RunStats, file_sha256, finished_already

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
    classifier = file_sha256(Path(run) / "model.safetensors")
    make_seed_labels(model, index, out / "labels" / split, cfg, method, family, device, progress=progress,
                     models={"classifier": classifier})
    return loop.fit(refine_task(cfg, method, lambda: copy.deepcopy(model.encoder), index, out / "labels" / split,
                                classifier_sha256=classifier),
                    out, seed=cfg.seed, device=str(device), resume=resume, show_progress=progress)


def _manifest_facts(cfg: ExperimentConfig, run: Path, split: str) -> dict[str, Any]:
    return {"run": run, "split": split, "config": cfg, "input": cfg.data.root}


def finished_refine(cfg: ExperimentConfig, run: Path, method: str, family: str, split: str,
                    shard: tuple[int, int] = (0, 1), out: Optional[Path] = None) -> Optional[tuple[RunStats, Path]]:
    """(stats, masks folder) of a refine run with nothing left to do — every image of the shard
    refined with these settings by this classifier (and, for irn / psa, this trained head) — or None;
    checked before any model is loaded (:func:`tagseg.runner.finished_already`)."""
    net_path = refine_dir(run, method) / "model.safetensors" if method in TRAINED_REFINE_METHODS else None
    if net_path is not None and not net_path.is_file():
        return None
    out = Path(out) if out is not None else masks_dir(run, method, split).parent
    info = refine_manifest(cfg, method, family, _manifest_facts(cfg, run, split), Path(run) / "model.safetensors",
                           net_path)
    stats = finished_already(build_index(cfg.data, split).require_nonempty().records, refine_layout(out, method),
                             info, shard)
    return None if stats is None else (stats, out / "masks")


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
        net = load_refine_net(model, cfg, path, method, device,
                              classifier_sha256=file_sha256(Path(run) / "model.safetensors"))
    out = Path(out) if out is not None else masks_dir(run, method, split).parent
    index = build_index(cfg.data, split)
    manifest = _manifest_facts(cfg, run, split)
    with torch.no_grad():
        stats = run_refine(model, index, out, cfg, method, family, device, net, shard=shard, overwrite=overwrite,
                           progress=progress, manifest=manifest, workers=workers,
                           model_path=Path(run) / "model.safetensors", net_path=path, threads=threads)
    return stats, out / "masks"
