"""PASCAL VOC 2012 layout reader (JPEGImages, SegmentationClass[Aug], ImageSets, cls_labels.npy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tagseg.data.classes import VOC_CLASSES
from tagseg.data.records import DatasetIndex, ImageRecord, labels_from_mask, read_id_list
from tagseg.errors import DataError
from tagseg.utils.io import read_mask
from tagseg.utils.safe_npy import load_npy

MASK_DIRS = ("SegmentationClassAug", "SegmentationClass")


def _find_mask_dir(root: Path, mask_dir: str) -> Path | None:
    if mask_dir != "auto":
        path = root / mask_dir
        if not path.is_dir():
            raise DataError(f"mask folder not found: {path}")
        return path
    for name in MASK_DIRS:
        if (root / name).is_dir():
            return root / name
    return None


def _split_list(root: Path, split: str) -> Path:
    """``ImageSets/Segmentation/<split>.txt``; DataError naming it and the lists that exist when absent
    (e.g. a config's ``data.pseudo_split=train`` on a copy that has only train_aug and val)."""
    path = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not path.is_file():
        present = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        hint = (f" (lists there: {', '.join(present)}; choose one, e.g. data.pseudo_split={present[0]} "
                "or --split)") if present else ""
        raise DataError(f"split list not found: {path}{hint}")
    return path


def load_cls_labels(path: Path, num_classes: int = len(VOC_CLASSES)) -> dict[str, np.ndarray]:
    """Read the field's ``cls_labels.npy`` (pickled dict: int id 2007000528 -> float[K-1]).

    Returns id string ('2007_000528') -> multi-hot (K,) with background set. The pickle is read
    by a restricted unpickler (numpy arrays and plain containers only; see
    :mod:`tagseg.utils.safe_npy`). Raises DataError if the file is unreadable, asks for any
    other Python object, or a vector's length disagrees with the class list.
    """
    array = load_npy(path)  # a restricted unpickler: no code runs from the file
    if array.shape != () or array.dtype != object:
        raise DataError(f"{path}: expected a pickled dict id -> label vector, got an array of shape "
                        f"{array.shape} and dtype {array.dtype}")
    raw = array.item()
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a pickled dict id -> label vector, got {type(raw).__name__}")
    out: dict[str, np.ndarray] = {}
    for key, vec in raw.items():
        if not isinstance(key, (int, np.integer, str)) or not isinstance(vec, (np.ndarray, list)):
            raise DataError(f"{path}: entry {str(key)[:40]!r} is not an id -> label vector pair")
        try:
            vec = np.asarray(vec, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: label vector of id {key} is not numeric: {exc}") from exc
        if vec.shape[0] != num_classes - 1:
            raise DataError(f"{path}: label vector of id {key} has {vec.shape[0]} entries, "
                            f"but the class list has {num_classes - 1} object classes")
        if not np.all((vec == 0) | (vec == 1)):
            raise DataError(f"{path}: label vector of id {key} has values other than 0/1: {vec}")
        sid = str(key)
        if "_" not in sid and len(sid) == 10:
            sid = f"{sid[:4]}_{sid[4:]}"
        out[sid] = np.concatenate([[1.0], vec]).astype(np.float32)
    return out


def load_cls_labels_json(path: Path, num_classes: int = len(VOC_CLASSES)) -> dict[str, np.ndarray]:
    """Read ``cls_labels.json`` (tagseg.data.image_labels, written by ``tagseg prepare voc``):
    id -> multi-hot (K,) with background set. Plain JSON, preferred over cls_labels.npy."""
    from tagseg.data.image_labels import read_image_labels

    return read_image_labels(path, VOC_CLASSES[:num_classes])[1]


def read_voc(root: str | Path, split: str, label_source: str = "auto", mask_dir: str = "auto",
             max_images: int = 0) -> DatasetIndex:
    """Index one split of a VOC-layout folder.

    label_source: 'cls_labels' (root/cls_labels.json, else root/cls_labels.npy), 'masks' (derived from the masks), or
    'auto' (cls_labels.npy if present, else masks). Masks are optional for training splits with
    cls_labels; they are required for scoring.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"VOC root folder not found: {root}")
    images_dir = root / "JPEGImages"
    if not images_dir.is_dir():
        raise DataError(f"VOC images folder not found: {images_dir}")
    ids = read_id_list(_split_list(root, split))
    if max_images > 0:
        ids = ids[:max_images]
    masks = _find_mask_dir(root, mask_dir)
    cls_path = root / "cls_labels.json" if (root / "cls_labels.json").is_file() else root / "cls_labels.npy"
    if label_source == "auto":
        label_source = "cls_labels" if cls_path.is_file() else "masks"
    if label_source == "cls_labels":
        table = load_cls_labels_json(cls_path) if cls_path.suffix == ".json" else load_cls_labels(cls_path)
    elif label_source == "masks":
        if masks is None:
            raise DataError(f"labels from masks requested but no mask folder ({' or '.join(MASK_DIRS)}) in {root}")
        table = {}
    else:
        raise DataError(f"unknown label_source {label_source!r}: choose cls_labels, masks or auto")
    k = len(VOC_CLASSES)
    records = []
    for image_id in ids:
        image_path = images_dir / f"{image_id}.jpg"
        if not image_path.is_file():
            raise DataError(f"image listed in {split}.txt not found: {image_path}")
        mask_path = masks / f"{image_id}.png" if masks is not None else None
        if mask_path is not None and not mask_path.is_file():
            mask_path = None
        if label_source == "cls_labels":
            if image_id not in table:
                raise DataError(f"image {image_id} has no entry in {cls_path}")
            labels = table[image_id]
        else:
            if mask_path is None:
                raise DataError(f"mask for {image_id} not found in {masks}")
            labels = labels_from_mask(read_mask(mask_path, k), k)
        records.append(ImageRecord(image_id, image_path, labels, mask_path))
    return DatasetIndex(VOC_CLASSES, records, name=f"voc:{split}")
