"""The in-memory index every reader produces: class list + one record per image."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from tagseg.data.classes import voc_palette
from tagseg.errors import DataError


@dataclass(frozen=True)
class ImageRecord:
    """One image: id, paths, and multi-hot labels (K,) float32 with background (index 0) = 1."""

    id: str
    image_path: Path
    labels: np.ndarray
    mask_path: Optional[Path] = None


@dataclass
class DatasetIndex:
    """A split of a dataset: class names (index 0 = background), palette and records."""

    class_names: tuple[str, ...]
    records: list[ImageRecord]
    name: str = ""
    palette: list[int] = field(default_factory=voc_palette)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_masks(self) -> bool:
        return bool(self.records) and all(r.mask_path is not None for r in self.records)

    def __len__(self) -> int:
        return len(self.records)

    def require_nonempty(self) -> "DatasetIndex":
        if not self.records:
            raise DataError(f"dataset {self.name or '(unnamed)'} has no images")
        return self


def labels_from_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Multi-hot (K,) float32 of the classes with at least one pixel (255 ignored); bg always 1."""
    vec = np.zeros(num_classes, dtype=np.float32)
    values = np.unique(mask)
    vec[values[values < num_classes]] = 1.0
    vec[0] = 1.0
    return vec


def read_id_list(path: Path) -> list[str]:
    """One id per line (blank lines skipped; extra columns after whitespace ignored)."""
    if not path.is_file():
        raise DataError(f"split list not found: {path}")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    return ids
