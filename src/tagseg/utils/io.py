"""Atomic file writing and safe image / mask reading."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image, ImageFile

from tagseg.errors import DataError

# Never silently accept truncated files: a truncated JPEG must raise.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    Readers never see a half-written file, and a failure leaves nothing behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 RGB, shape (H, W, 3).

    Raises DataError naming the file if it is missing, corrupt or truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.array(im.convert("RGB"), dtype=np.uint8)  # writable (C extensions may require it)
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from exc
    return arr


def read_mask(path: str | os.PathLike, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Read a class-index mask PNG as uint8 (H, W); values must be < num_classes or ignore_index.

    Palette PNGs are read as raw indices (not colours). Raises DataError naming the file
    and the unknown values otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mask file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("P", "L", "I", "I;16"):
                raise DataError(
                    f"mask {path} has mode {im.mode!r}; expected a single-channel class-index PNG"
                )
            arr = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot decode mask {path}: {exc}") from exc
    values = np.unique(arr)
    bad = values[(values >= num_classes) & (values != ignore_index)]
    if bad.size:
        raise DataError(
            f"mask {path} contains values {bad.tolist()} outside the {num_classes} classes "
            f"(allowed: 0..{num_classes - 1} and {ignore_index} for ignore)"
        )
    return arr.astype(np.uint8)


def save_mask_png(path: str | os.PathLike, mask: np.ndarray, palette: Sequence[int]) -> None:
    """Write a uint8 (H, W) class-index mask as a palette PNG, atomically."""
    im = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    im.putpalette(list(palette))
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
