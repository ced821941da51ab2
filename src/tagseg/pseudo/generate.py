"""Pseudo-masks (METHODS.md §1, "Pseudo-masks"): class probabilities restricted to the image's
labels -> bilinear upsampling to the image size -> argmax, written as palette PNGs; optionally
refined by a dense CRF (METHODS.md §5).

Writes ``<out>/masks/<id>.png``; with ``cfg.crf`` also ``<out>/crf/masks/<id>.png`` (refined);
with ``cfg.save_probs`` also ``<out>/probs/<id>.npz`` (float16 probabilities of the present
classes), and ``<out>/manifest.json``. The loop is the per-image runner's
(:func:`tagseg.runner.run_per_image`): atomic writes, resume, shards, the folder lock, worker
processes that exit with their parent, the progress bar; this module only says what one image
produces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from tagseg.config import PseudoConfig
from tagseg.data.records import DatasetIndex, ImageRecord
from tagseg.errors import ConfigError
from tagseg.inference.pseudo import merged_probabilities
from tagseg.inference.refine import refine_with_crf as crf_refine
from tagseg.runner import (ManifestInfo, OutputLayout, RunOptions, RunStats, WorkerStep, file_sha256,
                           finished_already, run_per_image)
from tagseg.utils.io import atomic_path, read_image, save_mask_png

def refine_with_crf(image: np.ndarray, probs: torch.Tensor, cfg: PseudoConfig,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """Dense-CRF refinement of (K, H, W) probabilities on the present classes (METHODS.md §5)."""
    return crf_refine(image, probs, cfg.crf, cfg.crf_preset, device, renormalise=True)


def pseudo_layout(out_dir: str | Path, cfg: PseudoConfig) -> OutputLayout:
    """The files one image produces: 'masks', and 'crf' / 'probs' when configured."""
    files = {"masks": ("masks", "{id}.png")}
    if cfg.crf != "none":
        files["crf"] = ("crf", "masks", "{id}.png")
    if cfg.save_probs:
        files["probs"] = ("probs", "{id}.npz")
    return OutputLayout(Path(out_dir), files)


def save_probs_npz(path: Path, probs: torch.Tensor, labels: np.ndarray, root: Optional[Path] = None) -> None:
    classes = np.flatnonzero(labels > 0.5)
    with atomic_path(path, root) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, probs=probs[classes].numpy().astype(np.float16), classes=classes)


@torch.no_grad()
def process_record(model: nn.Module, rec: ImageRecord, paths: dict[str, Path], root: Path, cfg: PseudoConfig,
                   palette: list[int], device: torch.device | str = "cpu", family: str = "patch") -> None:
    """Write the outputs of one image (masks, and CRF masks / probabilities when configured) to
    ``paths`` (from :func:`pseudo_layout`)."""
    image = read_image(rec.image_path)
    probs = merged_probabilities(model, image, rec.labels, cfg, device, family)
    if cfg.save_probs:
        save_probs_npz(paths["probs"], probs, rec.labels, root=root)
    if cfg.crf != "none":
        refined = refine_with_crf(image, probs, cfg, device)
        save_mask_png(paths["crf"], refined.argmax(0).cpu().numpy().astype(np.uint8), palette, root=root)
    save_mask_png(paths["masks"], probs.argmax(0).numpy().astype(np.uint8), palette, root=root)


def pseudo_step(model: nn.Module, root: Path, cfg: PseudoConfig, palette: list[int],
                device: torch.device | str = "cpu", family: str = "patch"):
    """The runner's step for pseudo-masks: (record, paths) -> writes that image's files."""
    def step(rec: ImageRecord, paths: dict[str, Path]) -> None:
        process_record(model, rec, paths, root, cfg, palette, device, family)
    return step


def _worker_step(model_path: str, root: str, cfg: PseudoConfig, palette: list[int], family: str):
    from tagseg.inference.loading import load_trained_model

    return pseudo_step(load_trained_model(model_path, "cpu")[0], Path(root), cfg, palette, "cpu", family)


def pseudo_manifest(cfg: PseudoConfig, options: RunOptions, family: str,
                    model_path: Optional[Path] = None) -> ManifestInfo:
    """What ``manifest.json`` of a pseudo-mask folder records: the pseudo settings, the family, the
    model file's sha256 (when the model came from one) and ``options.manifest``'s facts."""
    models = {} if model_path is None else {"classifier": file_sha256(model_path)}
    return ManifestInfo(stage="pseudo", settings=cfg, extra={"family": family}, models=models,
                        **(options.manifest or {}))


def finished_pseudo_masks(index: DatasetIndex, out_dir: str | Path, cfg: PseudoConfig, options: RunOptions,
                          family: str, model_path: Path) -> Optional[RunStats]:
    """The stats of a pseudo-mask run with nothing left to do in ``out_dir`` (every image of the
    shard written by this model file with these settings), or None; checked before the model is
    loaded (:func:`tagseg.runner.finished_already`). Always None with ``options.overwrite``."""
    if options.overwrite:
        return None
    return finished_already(index.require_nonempty().records, pseudo_layout(out_dir, cfg),
                            pseudo_manifest(cfg, options, family, model_path), options.shard)


def generate_pseudo_masks(model: nn.Module, index: DatasetIndex, out_dir: str | Path, cfg: PseudoConfig,
                          options: RunOptions = RunOptions(), *, device: torch.device | str = "cpu",
                          family: str = "patch", model_path: Optional[Path] = None) -> RunStats:
    """Write pseudo-masks for the images of ``index`` (the shard ``options.shard``) into ``out_dir``.

    options: the per-image runner's options (shard, resume or overwrite, workers, threads, lock,
    progress, the manifest's extra facts). family: the model's family name; options.workers > 1
    runs that many CPU processes, each loading the model from ``model_path`` and running
    ``options.threads`` intra-op threads (default: the machine's cores divided by the workers).
    model_path: the file ``model`` was loaded from; its sha256 goes into the manifest, so that
    masks of another model are never resumed into (None: an in-memory model, not recorded).
    """
    from tagseg.utils.runtime import default_threads

    out_dir = Path(out_dir)
    records = index.require_nonempty().records
    worker_step = None
    run = options.runner_kwargs()
    if options.workers > 1:
        if model_path is None:
            raise ConfigError("parallel pseudo-mask generation needs the model file (model_path)")
        if torch.device(device).type != "cpu":
            raise ConfigError("--workers runs CPU processes; on a GPU split the set with --shard instead")
        worker_step = WorkerStep(_worker_step, (str(model_path), str(out_dir), cfg, index.palette, family))
        run["threads"] = options.threads or default_threads(options.workers)
    info = pseudo_manifest(cfg, options, family, model_path)
    step = pseudo_step(model, out_dir, cfg, index.palette, device, family)
    return run_per_image(records, step, pseudo_layout(out_dir, cfg), desc="pseudo-masks", worker_step=worker_step,
                         manifest=info, **run)
