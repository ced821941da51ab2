"""Pseudo-masks (METHODS.md §1, "Pseudo-masks"): patch probabilities -> label merge ->
bilinear upsampling to the image size -> argmax, written as palette PNGs.

Writes ``<out>/masks/<id>.png`` (and ``<out>/probs/<id>.npz`` with float16 merged
probabilities of the present classes when asked). Files are written atomically; images whose
outputs exist are skipped, so an interrupted run resumes. ``shard=(i, n)`` processes every
n-th image starting at i, so several processes or machines can split a dataset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from tagseg.config import PseudoConfig
from tagseg.data.records import DatasetIndex, ImageRecord
from tagseg.data.views import image_to_tensor
from tagseg.errors import DataError
from tagseg.families import get_family
from tagseg.utils.io import atomic_path, read_image, save_mask_png


@dataclass
class PseudoStats:
    written: int = 0
    skipped: int = 0
    seconds: float = 0.0


def merged_probabilities(model: nn.Module, image: np.ndarray, labels: np.ndarray, cfg: PseudoConfig,
                         device: torch.device | str = "cpu", family: str = "patch") -> torch.Tensor:
    """image uint8 (H, W, 3), labels (K,) -> label-restricted class probabilities (K, H, W), float32
    on CPU, computed by the model family's own rule (patch classifier: label merge of Z)."""
    x = image_to_tensor(image).to(device)
    return get_family(family).merged_probs(model, x, labels, cfg).float().cpu()


def shard_records(records: list[ImageRecord], shard: tuple[int, int]) -> list[ImageRecord]:
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise DataError(f"invalid shard {i}/{n}: need 0 <= i < n")
    return records[i::n]


def _done(out_dir: Path, rec_id: str, save_probs: bool) -> bool:
    if not (out_dir / "masks" / f"{rec_id}.png").is_file():
        return False
    return not save_probs or (out_dir / "probs" / f"{rec_id}.npz").is_file()


def save_probs_npz(path: Path, probs: torch.Tensor, labels: np.ndarray) -> None:
    classes = np.flatnonzero(labels > 0.5)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, probs=probs[classes].numpy().astype(np.float16), classes=classes)


@torch.no_grad()
def generate_pseudo_masks(model: nn.Module, index: DatasetIndex, out_dir: str | Path, cfg: PseudoConfig,
                          device: torch.device | str = "cpu", shard: tuple[int, int] = (0, 1),
                          overwrite: bool = False, progress: bool = True, family: str = "patch") -> PseudoStats:
    """Write pseudo-masks for the images of ``index`` (this shard) into ``out_dir``."""
    out_dir = Path(out_dir)
    records = shard_records(index.require_nonempty().records, shard)
    stats = PseudoStats()
    t0 = time.time()
    bar = tqdm(records, desc="pseudo-masks", unit="img", disable=not progress, dynamic_ncols=True)
    for rec in bar:
        if not overwrite and _done(out_dir, rec.id, cfg.save_probs):
            stats.skipped += 1
            continue
        image = read_image(rec.image_path)
        probs = merged_probabilities(model, image, rec.labels, cfg, device, family)
        mask = probs.argmax(0).numpy().astype(np.uint8)
        if cfg.save_probs:
            save_probs_npz(out_dir / "probs" / f"{rec.id}.npz", probs, rec.labels)
        save_mask_png(out_dir / "masks" / f"{rec.id}.png", mask, index.palette)
        stats.written += 1
        bar.set_postfix(img_per_s=f"{stats.written / max(1e-9, time.time() - t0):.2f}")
    stats.seconds = time.time() - t0
    return stats
