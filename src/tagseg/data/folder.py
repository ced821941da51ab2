"""A plain folder dataset for users' own images.

Layout::

    root/classes.txt          one class name per line; line 1 is the background class
    root/images/<file>        any format PIL reads
    root/labels.csv           header "image,labels"; labels = class names joined by ';'
                              (background implied; an empty field = background only)
    root/masks/<stem>.png     optional class-index masks (for scoring)
    root/splits/<split>.txt   optional; ids (file stems). Without it every split is all images.

Text files are UTF-8 (a byte-order mark is skipped) with LF or CRLF line ends. Image names must
be plain file names inside ``images/`` (no separators, ``..``, drive letters or control
characters); a bad name, a duplicate or an unknown class is a DataError naming the file and line.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from tagseg.data.records import DatasetIndex, ImageRecord, read_id_list, read_text_lines
from tagseg.errors import DataError
from tagseg.utils.safe_paths import check_id


def read_class_names(path: Path) -> tuple[str, ...]:
    """Class names from a classes file; at least background and one object class, no duplicates."""
    names = tuple(line.strip() for line in read_text_lines(path, "classes file") if line.strip())
    if len(names) < 2:
        raise DataError(f"{path}: need a background class and at least one object class, got {list(names)}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate class names {dupes}")
    return names


def _read_labels_csv(csv_path: Path, names: tuple[str, ...], images_dir: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """labels.csv -> {id (image file stem): (image path, multi-hot (K,) float32)}, in file order."""
    lookup = {n: i for i, n in enumerate(names)}
    text = "\n".join(read_text_lines(csv_path, "labels file"))
    rows: dict[str, tuple[Path, np.ndarray]] = {}
    first_line: dict[str, int] = {}
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader, [])]
        if not {"image", "labels"} <= set(header):
            raise DataError(f"{csv_path}:1: header must contain the columns 'image' and 'labels', got {header}")
        col_image, col_labels = header.index("image"), header.index("labels")
        for fields in reader:
            line_no = reader.line_num
            if not any(f.strip() for f in fields):
                continue
            image_name = fields[col_image].strip() if col_image < len(fields) else ""
            if not image_name:
                raise DataError(f"{csv_path}:{line_no}: empty image name")
            check_id(image_name, csv_path, line_no)
            stem = Path(image_name).stem
            check_id(stem, csv_path, line_no)
            if stem in first_line:
                raise DataError(f"{csv_path}:{line_no}: image {image_name} listed twice "
                                f"(id {stem!r} first on line {first_line[stem]})")
            first_line[stem] = line_no
            vec = np.zeros(len(names), dtype=np.float32)
            vec[0] = 1.0
            labels = fields[col_labels] if col_labels < len(fields) else ""
            for name in filter(None, (p.strip() for p in labels.split(";"))):
                if name not in lookup:
                    raise DataError(f"{csv_path}:{line_no}: unknown class {name!r} for image {image_name}; "
                                    f"classes.txt lists {list(names)}")
                vec[lookup[name]] = 1.0
            rows[stem] = (images_dir / image_name, vec)
    except csv.Error as exc:
        raise DataError(f"{csv_path}:{reader.line_num}: not valid CSV: {exc}") from exc
    return rows


def read_folder(root: str | Path, split: str = "all", max_images: int = 0) -> DatasetIndex:
    """Index a folder dataset (see the module docstring). Unknown class names in labels.csv,
    missing images and duplicate rows raise DataError naming the row."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    names = read_class_names(root / "classes.txt")
    csv_path = root / "labels.csv"
    if not csv_path.is_file():
        raise DataError(f"labels file not found: {csv_path}")
    rows = _read_labels_csv(csv_path, names, root / "images")
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
