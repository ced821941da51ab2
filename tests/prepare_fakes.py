"""Small fake downloads for the prepare tests: a VOC 2012 + SBD pair and a COCO 2014 folder."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

from tagseg.data.classes import VOC_CLASSES, voc_palette
from tagseg.data.coco import COCO_CATEGORIES

VOC_IDS = {  # VOC train / val (with VOC masks), SBD train / val (with .mat files)
    "voc_train": ["2008_000001", "2008_000002"],
    "voc_val": ["2008_000003", "2008_000004"],
    "sbd_train": ["2008_000002", "2008_000005", "2008_000006"],
    "sbd_val": ["2008_000004", "2008_000007"],
}
EXPECTED_VOC = {
    "train_aug": ["2008_000001", "2008_000002", "2008_000005", "2008_000006", "2008_000007"],
    "train": ["2008_000001", "2008_000002"],
    "val": ["2008_000003", "2008_000004"],
}
EXTRA_XML_CLASS = {"2008_000007": 15}  # an annotated person without pixels in the mask


def voc_mask(i: int, size: tuple[int, int]) -> np.ndarray:
    """A mask with a box of class (i % 20) + 1 bordered by 255, and class 8 in even images."""
    h, w = size
    m = np.zeros((h, w), dtype=np.uint8)
    m[4:h // 2, 4:w // 2] = (i % 20) + 1
    m[3, 3:w // 2 + 1] = 255
    if i % 2 == 0:
        m[h // 2 + 2:h - 2, w // 2 + 2:w - 2] = 8
    return m


def write_png_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette(voc_palette())
    im.save(path)


def write_sbd_mat(path: Path, mask: np.ndarray) -> None:
    """An SBD-style cls/<id>.mat: struct GTcls with fields Segmentation, Boundaries, CategoriesPresent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    present = np.array([v for v in np.unique(mask) if 0 < v < 21], dtype=np.uint8)
    gt = {"Segmentation": mask.astype(np.uint8), "Boundaries": np.zeros((20, 1), dtype=object),
          "CategoriesPresent": present}
    savemat(path, {"GTcls": gt}, do_compression=True)


def write_xml(path: Path, classes: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    objs = "".join(f"<object><name>{VOC_CLASSES[c]}</name><difficult>0</difficult></object>" for c in classes)
    path.write_text(f"<annotation><filename>{path.stem}.jpg</filename>{objs}</annotation>")


def make_voc_sources(root: Path, size: tuple[int, int] = (40, 56)) -> tuple[Path, Path, dict]:
    """Fake extracted VOCdevkit/VOC2012 and benchmark_RELEASE folders; returns (voc, sbd, truth) with
    truth = id -> (mask expected in SegmentationClassAug, label class indices)."""
    voc = root / "VOCdevkit" / "VOC2012"
    sbd = root / "benchmark_RELEASE"
    rng = np.random.default_rng(0)
    all_ids = sorted(set().union(*VOC_IDS.values()))
    truth = {}
    for i, image_id in enumerate(all_ids):
        (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        mask = voc_mask(i, size)
        in_voc = image_id in VOC_IDS["voc_train"] + VOC_IDS["voc_val"]
        if in_voc:
            write_png_mask(voc / "SegmentationClass" / f"{image_id}.png", mask)
        if image_id in VOC_IDS["sbd_train"] + VOC_IDS["sbd_val"]:
            # SBD has no 255 borders; where VOC has a mask too, SBD's differs (VOC must win)
            sbd_mask = np.where(mask == 255, 0, mask).astype(np.uint8)
            if in_voc:
                sbd_mask = np.full(size, 3, dtype=np.uint8)
            write_sbd_mat(sbd / "dataset" / "cls" / f"{image_id}.mat", sbd_mask if in_voc else mask * (mask != 255))
            if not in_voc:
                mask = sbd_mask
        classes = sorted({int(v) for v in np.unique(mask) if 0 < v < 21} | ({EXTRA_XML_CLASS[image_id]}
                                                                            if image_id in EXTRA_XML_CLASS else set()))
        write_xml(voc / "Annotations" / f"{image_id}.xml", classes)
        truth[image_id] = (mask, classes)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(VOC_IDS["voc_train"]) + "\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(VOC_IDS["voc_val"]) + "\n")
    (sbd / "dataset" / "train.txt").write_text("\n".join(VOC_IDS["sbd_train"]) + "\n")
    (sbd / "dataset" / "val.txt").write_text("\n".join(VOC_IDS["sbd_val"]) + "\n")
    return voc, sbd, truth


def make_voc_archives(root: Path, voc: Path, sbd: Path) -> tuple[Path, Path]:
    """VOCtrainval-style .tar (VOCdevkit/VOC2012/...) and SBD-style .tgz (benchmark_RELEASE/...)."""
    voc_tar, sbd_tgz = root / "VOCtrainval_11-May-2012.tar", root / "benchmark.tgz"
    with tarfile.open(voc_tar, "w") as tf:
        tf.add(voc.parent, arcname="VOCdevkit")
    with tarfile.open(sbd_tgz, "w:gz") as tf:
        tf.add(sbd, arcname="benchmark_RELEASE")
    return voc_tar, sbd_tgz


# ---------------------------------------------------------------------------------------------
# COCO
# ---------------------------------------------------------------------------------------------

PERSON, DOG, CAT = 1, 18, 17  # COCO category ids (class indices 1, 17, 16)


def rle_uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a bool (H, W) mask: column-major runs starting with zeros."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": [mask.shape[0], mask.shape[1]], "counts": [int(c) for c in counts]}


def box_polygon(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def make_coco_source(root: Path, size: tuple[int, int] = (32, 48)) -> tuple[Path, dict]:
    """A fake COCO 2014 folder. train: 0 two overlapping instances (big person, small dog on it),
    1 a cat + a crowd of persons (RLE) partly under the cat, 2 no annotation, 3 only a crowd;
    val: 0 a dog, 1 no annotation, 2 a person. Returns (folder, info)."""
    h, w = size
    rng = np.random.default_rng(1)
    cats = [{"id": cid, "name": name, "supercategory": "x"} for cid, name in COCO_CATEGORIES]
    crowd = np.zeros(size, dtype=bool)
    crowd[10:20, 0:20] = True
    anns_train = [
        {"id": 1, "image_id": 100, "category_id": PERSON, "iscrowd": 0, "segmentation": [box_polygon(2, 2, 40, 28)]},
        {"id": 2, "image_id": 100, "category_id": DOG, "iscrowd": 0, "segmentation": [box_polygon(10, 10, 20, 20)]},
        {"id": 3, "image_id": 101, "category_id": CAT, "iscrowd": 0, "segmentation": [box_polygon(15, 5, 30, 25)]},
        {"id": 4, "image_id": 101, "category_id": PERSON, "iscrowd": 1, "segmentation": rle_uncompressed(crowd)},
        {"id": 5, "image_id": 103, "category_id": DOG, "iscrowd": 1, "segmentation": rle_uncompressed(crowd)},
    ]
    anns_val = [
        {"id": 11, "image_id": 200, "category_id": DOG, "iscrowd": 0, "segmentation": [box_polygon(4, 4, 12, 12)]},
        {"id": 12, "image_id": 202, "category_id": PERSON, "iscrowd": 0, "segmentation": [box_polygon(30, 4, 44, 30)]},
    ]
    info = {}
    for split, image_ids, anns in (("train", [100, 101, 102, 103], anns_train), ("val", [200, 201, 202], anns_val)):
        images = []
        for num in image_ids:
            name = f"COCO_{split}2014_{num:012d}.jpg"
            (root / f"{split}2014").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)).save(root / f"{split}2014" / name)
            images.append({"id": num, "file_name": name, "height": h, "width": w})
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}2014.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
        info[split] = [Path(im["file_name"]).stem for im in images]
    return root, info


def make_coco_archives(src: Path, dst: Path) -> Path:
    """The fake COCO folder as the three downloads: train2014.zip, val2014.zip, annotations_trainval2014.zip."""
    import zipfile

    dst.mkdir(parents=True)
    for archive, folders in (("train2014.zip", ["train2014"]), ("val2014.zip", ["val2014"]),
                             ("annotations_trainval2014.zip", ["annotations"])):
        with zipfile.ZipFile(dst / archive, "w") as zf:
            for folder in folders:
                for path in sorted((src / folder).iterdir()):
                    zf.write(path, f"{folder}/{path.name}")
    return dst


def coco_id(split: str, num: int) -> str:
    return f"COCO_{split}2014_{num:012d}"


def layout_subset_as_downloads(subset: Path, dst: Path, n_train: int, n_val: int,
                               archives: bool = False) -> tuple[Path, Path, dict[str, list[str]]]:
    """Lay the real VOC subset's files out as VOC 2012 + SBD downloads would be (folders, or a .tar and
    a .tgz with ``archives``): val ids and every other train_aug id get VOC SegmentationClass masks
    (the train_aug ones form VOC's train list), the other train_aug ids SBD .mat files (split
    over SBD's train and val lists); Annotations XML come from the subset's labels.
    Returns (voc, sbd, expected lists)."""
    import shutil

    from tagseg.data.voc import load_cls_labels

    read = lambda name: (subset / "ImageSets" / "Segmentation" / name).read_text().split()  # noqa: E731
    train_ids, val_ids = read("train_aug.txt")[:n_train], read("val.txt")[:n_val]
    labels = load_cls_labels(subset / "cls_labels.npy")
    voc, sbd = dst / "VOCdevkit" / "VOC2012", dst / "benchmark_RELEASE"
    (voc / "JPEGImages").mkdir(parents=True)
    voc_train = train_ids[::2]
    sbd_only = [i for i in train_ids if i not in voc_train]
    for image_id in train_ids + val_ids:
        shutil.copyfile(subset / "JPEGImages" / f"{image_id}.jpg", voc / "JPEGImages" / f"{image_id}.jpg")
        write_xml(voc / "Annotations" / f"{image_id}.xml", [int(c) for c in np.flatnonzero(labels[image_id][1:]) + 1])
        src = subset / "SegmentationClassAug" / f"{image_id}.png"
        if image_id in sbd_only:
            with Image.open(src) as im:
                write_sbd_mat(sbd / "dataset" / "cls" / f"{image_id}.mat", np.asarray(im))
        else:
            (voc / "SegmentationClass").mkdir(exist_ok=True)
            shutil.copyfile(src, voc / "SegmentationClass" / f"{image_id}.png")
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(voc_train) + "\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(val_ids) + "\n")
    half = len(sbd_only) // 2
    (sbd / "dataset").mkdir(parents=True, exist_ok=True)
    (sbd / "dataset" / "train.txt").write_text("".join(f"{i}\n" for i in sbd_only[:half]))
    (sbd / "dataset" / "val.txt").write_text("".join(f"{i}\n" for i in sbd_only[half:]))
    expected = {"train_aug": sorted(train_ids), "train": sorted(voc_train), "val": sorted(val_ids)}
    if archives:
        voc, sbd = make_voc_archives(dst, voc, sbd)
    return voc, sbd, expected
