"""COCO 2014 as prepared by ``tagseg prepare coco``: 81 classes (0 = background).

Layout::

    root/JPEGImages/<id>.jpg          e.g. COCO_val2014_000000000042.jpg
    root/SegmentationClass/<id>.png   8-bit class-index PNGs (0 background, 1..80, 255 ignore)
    root/ImageSets/<split>.txt        train, val, val_part (one id per line)
    root/cls_labels.json              image-level labels (tagseg.data.image_labels)
"""

from __future__ import annotations

import re
from pathlib import Path

from tagseg.data.image_labels import read_image_labels
from tagseg.data.records import DatasetIndex, ImageRecord, read_id_list
from tagseg.errors import DataError

# The 80 COCO categories in ascending category-id order (ids 1..90 with gaps); class index = position + 1.
COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"),
    (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
)
COCO_CLASSES: tuple[str, ...] = ("background",) + tuple(name for _, name in COCO_CATEGORIES)

SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
COCO_SPLIT_DIR = "ImageSets"


def check_id(image_id: str, where: str) -> str:
    """``image_id`` if it is a plain file stem (letters, digits, '_', '-', '.'; no separators or
    '..'), else DataError naming ``where``: ids never become paths outside their folder."""
    if not SAFE_ID.fullmatch(image_id) or ".." in image_id:
        raise DataError(f"{where}: {image_id[:60]!r} is not a valid image id (letters, digits, _ - . only)")
    return image_id


def read_coco(root: str | Path, split: str, max_images: int = 0) -> DatasetIndex:
    """Index one split (train, val, val_part) of a prepared COCO tree (module docstring).

    Raises DataError for a missing folder, list or labels file, an id without an image or labels,
    or a class list that differs from COCO's 81 classes.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"COCO root folder not found: {root} (make it with `tagseg prepare coco`)")
    list_path = root / COCO_SPLIT_DIR / f"{split}.txt"
    if split == "val_part" and not list_path.is_file():
        raise DataError(f"split list not found: {list_path}; the 5,000-image val_part list is not shipped with "
                        "this tagseg: `tagseg prepare coco` derives it from the standard 40,137-id val list "
                        "(or give it with --val-part FILE), or use split val")
    ids = read_id_list(list_path)
    if max_images > 0:
        ids = ids[:max_images]
    names, table = read_image_labels(root / "cls_labels.json", COCO_CLASSES)
    images_dir, masks_dir = root / "JPEGImages", root / "SegmentationClass"
    records = []
    for image_id in ids:
        image_path = images_dir / f"{image_id}.jpg"
        if not image_path.is_file():
            raise DataError(f"image listed in {list_path} not found: {image_path}")
        if image_id not in table:
            raise DataError(f"image {image_id} has no entry in {root / 'cls_labels.json'}")
        mask_path = masks_dir / f"{image_id}.png"
        records.append(ImageRecord(image_id, image_path, table[image_id], mask_path if mask_path.is_file() else None))
    return DatasetIndex(names, records, name=f"coco:{split}")
