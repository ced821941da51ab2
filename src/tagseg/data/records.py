"""The in-memory index every reader produces: class list + one record per image."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from tagseg.data.classes import voc_palette
from tagseg.errors import DataError
from tagseg.utils.safe_paths import check_list_id


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


def read_text_lines(path: Path, what: str) -> list[str]:
    """The lines of a UTF-8 text file (a byte-order mark is skipped; LF, CRLF or CR line ends).
    DataError naming the file when it is missing or not UTF-8 text."""
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    except OSError as exc:
        raise DataError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    return text.splitlines()


_FLAG = re.compile(r"[+-]?[0-9]+")


def read_id_list(path: Path) -> list[str]:
    """One id per line (blank lines skipped; numeric columns after the id, like the ``1`` / ``-1``
    flags of VOC's per-class lists, ignored).

    A UTF-8 byte-order mark and CRLF line ends are accepted. An id that is not a plain file
    name (see :mod:`tagseg.utils.safe_paths`), that holds whitespace (``2008_000123 copy`` is
    refused, never cut at the space) or that appears twice is a DataError naming the file and line.
    """
    ids: list[str] = []
    first_line: dict[str, int] = {}
    for line_no, line in enumerate(read_text_lines(path, "split list"), start=1):
        fields = line.split()
        if not fields:
            continue
        flags = len(fields) > 1 and all(_FLAG.fullmatch(f) for f in fields[1:])
        image_id = check_list_id(fields[0] if flags else line.strip(), path, line_no)
        if image_id in first_line:
            raise DataError(f"{path}:{line_no}: id {image_id!r} listed twice (first on line {first_line[image_id]})")
        first_line[image_id] = line_no
        ids.append(image_id)
    return ids
