"""Image-level labels in a safe, readable format: ``cls_labels.json``.

Layout::

    {"format": "tagseg-image-labels", "version": 1,
     "classes": ["background", "aeroplane", ...],          # K names, index 0 = background
     "labels": {"2007_000032": ["aeroplane", "person"], ...}}  # object classes per image id

Background is implied for every image. Plain JSON: nothing is unpickled when reading it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from tagseg.errors import DataError
from tagseg.utils.io import write_json

FORMAT = "tagseg-image-labels"
FORMAT_VERSION = 1


def write_image_labels(path: str | Path, class_names: Sequence[str], labels: Mapping[str, Sequence[int]]) -> None:
    """Write ``labels`` (id -> object class indices 1..K-1) atomically, ids and classes sorted."""
    names = list(class_names)
    table = {}
    for image_id in sorted(labels):
        idx = sorted(set(int(i) for i in labels[image_id]))
        if any(i < 1 or i >= len(names) for i in idx):
            raise DataError(f"labels of {image_id} hold class indices {idx} outside 1..{len(names) - 1}")
        table[image_id] = [names[i] for i in idx]
    write_json(path, {"format": FORMAT, "version": FORMAT_VERSION, "classes": names, "labels": table})


def read_image_labels(path: str | Path, class_names: Sequence[str] | None = None
                      ) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """Read a ``cls_labels.json``: (class names, id -> multi-hot (K,) float32 with background = 1).

    class_names: if given, the file's class list must equal it. Raises DataError naming the file
    and the problem (unreadable JSON, wrong format, unknown class name, ...).
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read image-level labels {path}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise DataError(f"{path}: not a tagseg image-label file (expected \"format\": \"{FORMAT}\")")
    if raw.get("version") != FORMAT_VERSION:
        raise DataError(f"{path}: unsupported version {raw.get('version')!r} (this tagseg reads {FORMAT_VERSION})")
    names = raw.get("classes")
    table = raw.get("labels")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: \"classes\" must be a list of at least 2 class names")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: duplicate class names in \"classes\"")
    if class_names is not None and tuple(names) != tuple(class_names):
        raise DataError(f"{path}: class list {names[:5]}... ({len(names)} classes) differs from the expected "
                        f"{list(class_names)[:5]}... ({len(class_names)} classes)")
    if not isinstance(table, dict):
        raise DataError(f"{path}: \"labels\" must map image ids to lists of class names")
    lookup = {n: i for i, n in enumerate(names)}
    out: dict[str, np.ndarray] = {}
    for image_id, present in table.items():
        if not isinstance(present, list):
            raise DataError(f"{path}: labels of {image_id!r} must be a list of class names")
        vec = np.zeros(len(names), dtype=np.float32)
        vec[0] = 1.0
        for name in present:
            if name not in lookup or lookup[name] == 0:
                raise DataError(f"{path}: image {image_id!r} has unknown object class {name!r}")
            vec[lookup[name]] = 1.0
        out[str(image_id)] = vec
    return tuple(names), out
