"""A plain folder dataset for users' own images.

Layout::

    root/classes.txt          one class name per line; line 1 is the background class
    root/images/<file>        any format PIL reads
    root/labels.csv           header "image,labels"; labels = class names joined by ';'
                              (background implied; an empty field = background only)
    root/masks/<stem>.png     optional class-index masks (for scoring)
    root/splits/<split>.txt   optional; ids (file stems). Without it every split is all images.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tagseg.data.records import DatasetIndex, ImageRecord, read_id_list
from tagseg.errors import DataError


def read_class_names(path: Path) -> tuple[str, ...]:
    """Class names from a classes file; at least background and one object class, no duplicates."""
    if not path.is_file():
        raise DataError(f"classes file not found: {path}")
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if len(names) < 2:
        raise DataError(f"{path}: need a background class and at least one object class, got {list(names)}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate class names {dupes}")
    return names


def read_folder(root: str | Path, split: str = "all", max_images: int = 0) -> DatasetIndex:
    """Index a folder dataset (see the module docstring). Unknown class names in labels.csv,
    missing images and duplicate rows raise DataError naming the row."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    names = read_class_names(root / "classes.txt")
    lookup = {n: i for i, n in enumerate(names)}
    csv_path = root / "labels.csv"
    if not csv_path.is_file():
        raise DataError(f"labels file not found: {csv_path}")
    rows: dict[str, tuple[Path, np.ndarray]] = {}
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"image", "labels"} <= set(reader.fieldnames):
            raise DataError(f"{csv_path}: header must contain the columns 'image' and 'labels'")
        for line_no, row in enumerate(reader, start=2):
            image_name = (row["image"] or "").strip()
            if not image_name:
                raise DataError(f"{csv_path}:{line_no}: empty image name")
            stem = Path(image_name).stem
            if stem in rows:
                raise DataError(f"{csv_path}:{line_no}: image {image_name} listed twice")
            vec = np.zeros(len(names), dtype=np.float32)
            vec[0] = 1.0
            for name in filter(None, (p.strip() for p in (row["labels"] or "").split(";"))):
                if name not in lookup:
                    raise DataError(f"{csv_path}:{line_no}: unknown class {name!r} for image {image_name}; "
                                    f"classes.txt lists {list(names)}")
                vec[lookup[name]] = 1.0
            rows[stem] = (root / "images" / image_name, vec)
    split_file = root / "splits" / f"{split}.txt"
    if split_file.is_file():
        ids = read_id_list(split_file)
        missing = [i for i in ids if i not in rows]
        if missing:
            raise DataError(f"{split_file}: ids not in {csv_path}: {missing[:5]}")
    elif split == "all" or not (root / "splits").is_dir():
        ids = list(rows)
    else:
        raise DataError(f"split list not found: {split_file}")
    if max_images > 0:
        ids = ids[:max_images]
    masks_dir = root / "masks"
    records = []
    for image_id in ids:
        image_path, vec = rows[image_id]
        if not image_path.is_file():
            raise DataError(f"image listed in {csv_path} not found: {image_path}")
        mask_path = masks_dir / f"{image_id}.png"
        records.append(ImageRecord(image_id, image_path, vec, mask_path if mask_path.is_file() else None))
    return DatasetIndex(names, records, name=f"folder:{root.name}:{split}")
