"""The pseudo-mask loop before the per-image runner, kept only until the runner port is proven
bit-identical to it (tests/test_runner_pseudo.py). Pseudo-masks (METHODS.md §1, "Pseudo-masks"): class probabilities restricted to the image's
labels -> bilinear upsampling to the image size -> argmax, written as palette PNGs; optionally
refined by a dense CRF (METHODS.md §5).

Writes ``<out>/masks/<id>.png``; with ``cfg.crf`` also ``<out>/crf/masks/<id>.png`` (refined);
with ``cfg.save_probs`` also ``<out>/probs/<id>.npz`` (float16 probabilities of the present
classes). Files are written atomically; images whose outputs exist are skipped, so an
interrupted run resumes. ``shard=(i, n)`` processes every n-th image starting at i, so several
processes or machines can split a dataset; ``workers`` splits this shard over CPU processes,
which exit on their own when the parent process dies (even by ``kill -9``). Every output path
is checked to lie inside ``<out>`` before it is written.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
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
from tagseg.utils.io import (atomic_path, max_image_pixels, read_image, remove_stale_temp_files, save_mask_png,
                             set_max_image_pixels)
from tagseg.utils.runtime import default_threads
from tagseg.utils.safe_paths import path_inside


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


def output_paths(out_dir: Path, rec_id: str, cfg: PseudoConfig) -> dict[str, Path]:
    """The files one image produces ('masks', and 'crf' / 'probs' when configured), each checked
    to lie inside ``out_dir`` (DataError otherwise)."""
    paths = {"masks": path_inside(out_dir, "masks", f"{rec_id}.png")}
    if cfg.crf != "none":
        paths["crf"] = path_inside(out_dir, "crf", "masks", f"{rec_id}.png")
    if cfg.save_probs:
        paths["probs"] = path_inside(out_dir, "probs", f"{rec_id}.npz")
    return paths


def _done(out_dir: Path, rec_id: str, cfg: PseudoConfig) -> bool:
    return all(p.is_file() for p in output_paths(out_dir, rec_id, cfg).values())


def save_probs_npz(path: Path, probs: torch.Tensor, labels: np.ndarray, root: Optional[Path] = None) -> None:
    classes = np.flatnonzero(labels > 0.5)
    with atomic_path(path, root) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, probs=probs[classes].numpy().astype(np.float16), classes=classes)


def process_record(model: nn.Module, rec: ImageRecord, out_dir: Path, cfg: PseudoConfig, palette: list[int],
                   device: torch.device | str = "cpu", family: str = "patch") -> None:
    """Write the outputs of one image (masks, and CRF masks / probabilities when configured)."""
    paths = output_paths(out_dir, rec.id, cfg)
    image = read_image(rec.image_path)
    probs = merged_probabilities(model, image, rec.labels, cfg, device, family)
    if cfg.save_probs:
        save_probs_npz(paths["probs"], probs, rec.labels, root=out_dir)
    if cfg.crf != "none":
        refined = refine_with_crf(image, probs, cfg, device)
        save_mask_png(paths["crf"], refined.argmax(0).cpu().numpy().astype(np.uint8), palette, root=out_dir)
    save_mask_png(paths["masks"], probs.argmax(0).numpy().astype(np.uint8), palette, root=out_dir)


@torch.no_grad()
def generate_pseudo_masks(model: nn.Module, index: DatasetIndex, out_dir: str | Path, cfg: PseudoConfig,
                          device: torch.device | str = "cpu", shard: tuple[int, int] = (0, 1),
                          overwrite: bool = False, progress: bool = True, family: str = "patch",
                          workers: int = 1, model_path: Optional[Path] = None,
                          threads: Optional[int] = None) -> PseudoStats:
    """Write pseudo-masks for the images of ``index`` (this shard) into ``out_dir``.

    workers > 1 runs that many CPU processes, each loading the model from ``model_path`` and
    running ``threads`` intra-op threads (default: the machine's cores divided by ``workers``). The
    caller should hold this shard's lock (:func:`tagseg.utils.runlock.run_lock`): temporary files
    left by a killed earlier run of the same images are removed first.
    """
    out_dir = Path(out_dir)
    records = shard_records(index.require_nonempty().records, shard)
    # a run killed mid-write leaves hidden temporary files of this shard's images: remove them
    remove_stale_temp_files([p for r in records for p in output_paths(out_dir, r.id, cfg).values()])
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
PARENT_POLL_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _exit_with_parent(parent_pid: int) -> None:
    """Make this (worker) process die when ``parent_pid`` does: the Linux parent-death signal,
    plus a watchdog thread that polls ``os.getppid()`` (every platform, and a backstop)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still works
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_SECONDS)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="tagseg-parent-watchdog", daemon=True).start()


def _init_worker(model_path: str, threads: int, parent_pid: int, max_pixels: int) -> None:
    from tagseg.inference.loading import load_trained_model

    _exit_with_parent(parent_pid)
    torch.set_num_threads(threads)
    set_max_image_pixels(max_pixels)
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
                             initargs=(str(model_path), threads, os.getpid(), max_image_pixels())) as pool:
        futures = [pool.submit(_work, todo[i:i + chunk], out_dir, cfg, palette, family)
                   for i in range(0, len(todo), chunk)]
        try:
            for fut in as_completed(futures):
                yield fut.result()
        except BaseException:  # e.g. a full disk: stop at once instead of running every queued chunk
            pool.shutdown(wait=True, cancel_futures=True)
            raise
