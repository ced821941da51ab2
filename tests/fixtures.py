"""Tiny on-disk datasets written by tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tagseg.data.classes import voc_palette


def write_mask(path: Path, mask: np.ndarray) -> None:
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette(voc_palette())
    im.save(path)


def make_voc(root: Path, n: int = 4, size: tuple[int, int] = (48, 64), with_cls_labels: bool = True) -> list[str]:
    """A VOC-layout folder with n images: a 'cat' (8) box on background, and a 'dog' (12) in odd ones."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids, table = [], {}
    for i in range(n):
        image_id = f"2008_{i:06d}"
        ids.append(image_id)
        img = rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "JPEGImages" / f"{image_id}.jpg")
        mask = np.zeros(size, dtype=np.uint8)
        mask[5:20, 5:25] = 8
        mask[4, 4:26] = 255
        vec = np.zeros(20, dtype=np.float32)
        vec[7] = 1
        if i % 2:
            mask[25:40, 30:60] = 12
            vec[11] = 1
        write_mask(root / "SegmentationClassAug" / f"{image_id}.png", mask)
        table[int(image_id.replace("_", ""))] = vec
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    if with_cls_labels:
        np.save(root / "cls_labels.npy", table)
    return ids


def make_folder(root: Path, n: int = 3) -> list[str]:
    """A folder dataset with classes background, apple, pear."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\napple\npear\n")
    rows = ["image,labels"]
    rng = np.random.default_rng(1)
    ids = []
    for i in range(n):
        name = f"img{i}"
        ids.append(name)
        Image.fromarray(rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
        mask = np.zeros((32, 32), dtype=np.uint8)
        mask[:10, :10] = 1
        labels = ["apple"]
        if i == 1:
            mask[20:, 20:] = 2
            labels.append("pear")
        write_mask(root / "masks" / f"{name}.png", mask)
        rows.append(f"{name}.png,{';'.join(labels)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return ids
