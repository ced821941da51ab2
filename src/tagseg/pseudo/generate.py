"""Pseudo-masks (METHODS.md §1, "Pseudo-masks"): class probabilities restricted to the image's
labels -> bilinear upsampling to the image size -> argmax, written as palette PNGs; optionally
refined by a dense CRF (METHODS.md §5).

Writes ``<out>/masks/<id>.png``; with ``cfg.crf`` also ``<out>/crf/masks/<id>.png`` (refined);
with ``cfg.save_probs`` also ``<out>/probs/<id>.npz`` (float16 probabilities of the present
classes). Files are written atomically; images whose outputs exist are skipped, so an
interrupted run resumes. ``shard=(i, n)`` processes every n-th image starting at i, so several
processes or machines can split a dataset; ``workers`` splits this shard over CPU processes.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from tagseg.config import PseudoConfig
from tagseg.data.records import DatasetIndex, ImageRecord
from tagseg.errors import ConfigError, DataError
from tagseg.inference.pseudo import merged_probabilities
from tagseg.inference.refine import refine_with_crf as crf_refine
from tagseg.utils.io import atomic_path, read_image, save_mask_png
from tagseg.utils.runtime import default_threads


@dataclass
class PseudoStats:
    written: int = 0
    skipped: int = 0
    seconds: float = 0.0


def refine_with_crf(image: np.ndarray, probs: torch.Tensor, cfg: PseudoConfig,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """Dense-CRF refinement of (K, H, W) probabilities on the present classes (METHODS.md §5)."""
    return crf_refine(image, probs, cfg.crf, cfg.crf_preset, device, renormalise=True)


def shard_records(records: list[ImageRecord], shard: tuple[int, int]) -> list[ImageRecord]:
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise DataError(f"invalid shard {i}/{n}: need 0 <= i < n")
    return records[i::n]


def _done(out_dir: Path, rec_id: str, cfg: PseudoConfig) -> bool:
    needed = [out_dir / "masks" / f"{rec_id}.png"]
    if cfg.crf != "none":
        needed.append(out_dir / "crf" / "masks" / f"{rec_id}.png")
    if cfg.save_probs:
        needed.append(out_dir / "probs" / f"{rec_id}.npz")
    return all(p.is_file() for p in needed)


def save_probs_npz(path: Path, probs: torch.Tensor, labels: np.ndarray) -> None:
    classes = np.flatnonzero(labels > 0.5)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, probs=probs[classes].numpy().astype(np.float16), classes=classes)


def process_record(model: nn.Module, rec: ImageRecord, out_dir: Path, cfg: PseudoConfig, palette: list[int],
                   device: torch.device | str = "cpu", family: str = "patch") -> None:
    """Write the outputs of one image (masks, and CRF masks / probabilities when configured)."""
    image = read_image(rec.image_path)
    probs = merged_probabilities(model, image, rec.labels, cfg, device, family)
    if cfg.save_probs:
        save_probs_npz(out_dir / "probs" / f"{rec.id}.npz", probs, rec.labels)
    if cfg.crf != "none":
        refined = refine_with_crf(image, probs, cfg, device)
        save_mask_png(out_dir / "crf" / "masks" / f"{rec.id}.png", refined.argmax(0).cpu().numpy().astype(np.uint8),
                      palette)
    save_mask_png(out_dir / "masks" / f"{rec.id}.png", probs.argmax(0).numpy().astype(np.uint8), palette)


@torch.no_grad()
def generate_pseudo_masks(model: nn.Module, index: DatasetIndex, out_dir: str | Path, cfg: PseudoConfig,
                          device: torch.device | str = "cpu", shard: tuple[int, int] = (0, 1),
                          overwrite: bool = False, progress: bool = True, family: str = "patch",
                          workers: int = 1, model_path: Optional[Path] = None,
                          threads: Optional[int] = None) -> PseudoStats:
    """Write pseudo-masks for the images of ``index`` (this shard) into ``out_dir``.

    workers > 1 runs that many CPU processes, each loading the model from ``model_path`` and
    running ``threads`` intra-op threads (default: the machine's cores divided by ``workers``).
    """
    out_dir = Path(out_dir)
    records = shard_records(index.require_nonempty().records, shard)
    todo = [r for r in records if overwrite or not _done(out_dir, r.id, cfg)]
    stats = PseudoStats(skipped=len(records) - len(todo))
    t0 = time.time()
    bar = tqdm(total=len(todo), desc="pseudo-masks", unit="img", disable=not progress, dynamic_ncols=True)
    if workers > 1 and todo:
        if model_path is None:
            raise ConfigError("parallel pseudo-mask generation needs the model file (model_path)")
        if torch.device(device).type != "cpu":
            raise ConfigError("--workers runs CPU processes; on a GPU split the set with --shard instead")
        for n in _run_pool(todo, out_dir, cfg, index.palette, model_path, family, workers, threads):
            stats.written += n
            bar.update(n)
            bar.set_postfix(img_per_s=f"{stats.written / max(1e-9, time.time() - t0):.2f}")
    else:
        for rec in todo:
            process_record(model, rec, out_dir, cfg, index.palette, device, family)
            stats.written += 1
            bar.update(1)
            bar.set_postfix(img_per_s=f"{stats.written / max(1e-9, time.time() - t0):.2f}")
    bar.close()
    stats.seconds = time.time() - t0
    return stats


_WORKER: dict = {}


def _init_worker(model_path: str, threads: int) -> None:
    from tagseg.inference.loading import load_trained_model

    torch.set_num_threads(threads)
    _WORKER["model"] = load_trained_model(model_path, "cpu")[0]


def _work(chunk: list[ImageRecord], out_dir: Path, cfg: PseudoConfig, palette: list[int], family: str) -> int:
    with torch.no_grad():
        for rec in chunk:
            process_record(_WORKER["model"], rec, out_dir, cfg, palette, "cpu", family)
    return len(chunk)


def _run_pool(todo: list[ImageRecord], out_dir: Path, cfg: PseudoConfig, palette: list[int], model_path: Path,
              family: str, workers: int, threads: Optional[int] = None):
    """Yield the number of images finished per completed chunk."""
    threads = threads or default_threads(workers)
    chunk = max(1, min(16, len(todo) // (4 * workers)))
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(str(model_path), threads)) as pool:
        futures = [pool.submit(_work, todo[i:i + chunk], out_dir, cfg, palette, family)
                   for i in range(0, len(todo), chunk)]
        for fut in as_completed(futures):
            yield fut.result()
