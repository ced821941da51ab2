"""COCO 2014 instance annotations -> semantic masks (81 classes), standard lists, image-level labels.

Input: one folder with ``train2014/*.jpg``, ``val2014/*.jpg`` and
``annotations/instances_{train,val}2014.json`` -- or the downloads as they are: ``train2014.zip``,
``val2014.zip``, ``annotations_trainval2014.zip`` (read in place; images are then copied out).
Output: the layout :func:`tagseg.data.coco.read_coco` reads (``JPEGImages``, ``SegmentationClass``,
``ImageSets/{train,val,val_part}.txt``, ``cls_labels.json``, ``classes.txt``, ``prepare.json``).
``val_part`` is derived (:func:`derive_val_part`) unless a list is given.

Mask rules (:class:`CocoMaskConfig`, recorded in ``prepare.json``):

- classes: 0 background, then the 80 categories in ascending category id (1 person ... 80 toothbrush);
- crowd (``iscrowd=1``) regions: ``crowd=ignore`` (default) writes 255, ``background`` leaves 0,
  ``class`` paints them like an instance. Non-crowd instances are painted over crowd regions;
- overlapping instances: ``overlap=smaller`` (default) -- the instance with fewer pixels wins
  (instances are painted from the largest to the smallest; equal sizes: the later annotation id
  wins); ``overlap=order`` -- the later annotation (higher id) wins;
- polygons are rasterised with PIL (``ImageDraw.polygon``, edges included), so pycocotools is not
  needed for them; its own rasteriser can differ by about one pixel along edges. Uncompressed RLE
  (COCO's crowd format) is decoded here; compressed RLE needs pycocotools (``tagseg[coco]``).

Lists: an image is kept when the instances file has at least one annotation for it (crowd
included), the filter WSSS and detection code commonly apply; COCO 2014 has 82,783 / 40,504
images and the field's lists 82,081 / 40,137 (702 / 367 left out). Whether this rule reproduces
the lists' checksums (verify.py) exactly has not been checked against the real annotation files. ``keep_unannotated`` keeps the others as pure
background. Image-level labels: the categories of an image's annotations (crowd ones too unless
``labels_include_crowd=false``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
import zlib
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, Optional

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from tagseg.data.classes import IGNORE_INDEX, voc_palette
from tagseg.data.coco import COCO_CATEGORIES, COCO_CLASSES, COCO_SPLIT_DIR, check_id
from tagseg.data.image_labels import write_image_labels
from tagseg.data.prepare.archives import DEFAULT_LIMITS, ExtractionLimits, check_declared, copy_bounded
from tagseg.data.prepare.coco_checks import check_real_size, rle_string_counts, validate_instances
from tagseg.data.prepare.parallel import resolve_workers, run_jobs
from tagseg.data.prepare.verify import COCO_STANDARD_LISTS, ListExpectation, TreeLayout, VerifyReport, verify_tree
from tagseg.data.prepare.voc import PrepareResult, make_output_folder, output_lock
from tagseg.errors import ConfigError, DataError
from tagseg.utils.io import atomic_path, max_image_pixels, save_mask_png, write_json, write_text
from tagseg.utils.safe_paths import check_list_id

COCO_LAYOUT = TreeLayout(lists_dir=COCO_SPLIT_DIR, images_dir="JPEGImages", masks_dir="SegmentationClass")
ALL_IMAGES_COUNTS = {"train": 82783, "val": 40504}

WHERE_TO_GET = ("COCO 2014: train2014.zip, val2014.zip and annotations_trainval2014.zip from the COCO "
                "dataset's download page (cocodataset.org); put them (or what they unzip to) in one folder. "
                "tagseg never downloads them itself.")


@dataclass
class CocoMaskConfig:
    """How ``tagseg prepare coco`` turns instances into semantic masks (module docstring)."""

    crowd: str = "ignore"  # ignore (255) | background (0) | class (painted like an instance)
    overlap: str = "smaller"  # smaller (smaller instance wins) | order (later annotation id wins)
    labels_include_crowd: bool = True  # crowd annotations count as image-level labels
    keep_unannotated: bool = False  # keep images without annotations (pure background) in the lists
    images: str = "link"  # link (hard link, copy if impossible) | copy | symlink


def validate_mask_config(cfg: CocoMaskConfig) -> None:
    if cfg.crowd not in ("ignore", "background", "class"):
        raise ConfigError(f"crowd={cfg.crowd!r}: choose ignore, background or class")
    if cfg.overlap not in ("smaller", "order"):
        raise ConfigError(f"overlap={cfg.overlap!r}: choose smaller or order")
    if cfg.images not in ("link", "copy", "symlink"):
        raise ConfigError(f"images={cfg.images!r}: choose link, copy or symlink")


# ----------------------------------------------------------------------------------------------
# rasterisation
# ----------------------------------------------------------------------------------------------


def decode_rle(rle: dict, height: int, width: int, where: str) -> np.ndarray:
    """COCO RLE -> bool (H, W). Uncompressed (list counts) here; compressed (str) via pycocotools."""
    size = rle.get("size")
    if list(size or []) != [height, width]:
        raise DataError(f"{where}: RLE size {size} differs from the image's {[height, width]}")
    counts = rle.get("counts")
    if isinstance(counts, list):
        runs = np.asarray(counts, dtype=np.int64)
        if runs.ndim != 1 or (runs < 0).any() or int(runs.sum()) != height * width:
            raise DataError(f"{where}: RLE counts do not add up to {height}x{width} pixels")
        values = np.zeros(len(runs), dtype=bool)
        values[1::2] = True
        # COCO's RLE runs over the pixels in column-major order, starting with a run of zeros
        return np.repeat(values, runs).reshape(width, height).T
    if isinstance(counts, (str, bytes)):
        try:
            from pycocotools import mask as mask_utils
        except ImportError:
            raise DataError(f"{where}: compressed RLE needs pycocotools: pip install 'tagseg[coco]'") from None
        text = counts.decode("ascii", errors="replace") if isinstance(counts, bytes) else counts
        rle_string_counts(text, height * width, where)  # pycocotools returns arbitrary masks for bad strings
        try:
            return mask_utils.decode({"size": [height, width], "counts": text.encode("ascii")}).astype(bool)
        except (ValueError, UnicodeEncodeError) as exc:
            raise DataError(f"{where}: invalid compressed RLE: {exc}") from exc
    raise DataError(f"{where}: RLE counts must be a list or a string")


def polygon_mask(polygons: list, height: int, width: int, where: str) -> np.ndarray:
    """COCO polygons [[x1, y1, x2, y2, ...], ...] -> bool (H, W), filled with PIL (edges included)."""
    im = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(im)
    for poly in polygons:
        if not isinstance(poly, list) or len(poly) % 2 or not all(isinstance(v, (int, float)) for v in poly):
            raise DataError(f"{where}: a polygon must be a flat list of x, y numbers")
        if len(poly) >= 6:
            draw.polygon([(float(poly[i]), float(poly[i + 1])) for i in range(0, len(poly), 2)], fill=1, outline=1)
        elif len(poly) >= 2:
            draw.line([(float(poly[i]), float(poly[i + 1])) for i in range(0, len(poly), 2)], fill=1)
    return np.asarray(im, dtype=bool)


def instance_mask(segmentation: Any, height: int, width: int, where: str) -> np.ndarray:
    """One annotation's ``segmentation`` (polygons or RLE) -> bool (H, W)."""
    if isinstance(segmentation, list):
        return polygon_mask(segmentation, height, width, where)
    if isinstance(segmentation, dict):
        return decode_rle(segmentation, height, width, where)
    raise DataError(f"{where}: segmentation must be polygons or RLE")


def semantic_mask(anns: list[dict], height: int, width: int, cat_index: dict[int, int],
                  cfg: CocoMaskConfig, where: str) -> np.ndarray:
    """uint8 (H, W) class indices of one image from its annotations (rules: module docstring)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    instances = []
    for ann in sorted(anns, key=lambda a: a.get("id", 0)):
        aw = f"{where} annotation {ann.get('id')}"
        cls = cat_index[ann["category_id"]]
        m = instance_mask(ann.get("segmentation"), height, width, aw)
        if ann.get("iscrowd") and cfg.crowd != "class":
            if cfg.crowd == "ignore":
                mask[m] = IGNORE_INDEX
            continue
        instances.append((int(m.sum()), int(ann.get("id", 0)), cls, m))
    if cfg.overlap == "smaller":
        instances.sort(key=lambda t: (-t[0], t[1]))
    else:
        instances.sort(key=lambda t: t[1])
    for _, _, cls, m in instances:
        mask[m] = cls
    return mask


def image_classes(anns: list[dict], cat_index: dict[int, int], include_crowd: bool) -> list[int]:
    """Sorted object class indices named by an image's annotations."""
    return sorted({cat_index[a["category_id"]] for a in anns if include_crowd or not a.get("iscrowd")})


# ----------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------


def _place_image(src: Path, tmp: Path, mode: str) -> None:
    """Put ``src`` at the temporary path ``tmp`` (renamed onto the target by the caller)."""
    if mode == "symlink":
        tmp.unlink(missing_ok=True)
        os.symlink(src.resolve(), tmp)
        return
    if mode == "link":
        try:
            tmp.unlink(missing_ok=True)
            os.link(src, tmp)
            return
        except OSError:
            pass  # other file system: copy instead
    shutil.copyfile(src, tmp)


_ZIPS: dict[tuple[int, str], zipfile.ZipFile] = {}


def _open_zip(zip_path: str) -> zipfile.ZipFile:
    """One open ZipFile per process and archive (never shared across a fork)."""
    key = (os.getpid(), zip_path)
    if key not in _ZIPS:
        try:
            _ZIPS[key] = zipfile.ZipFile(zip_path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise DataError(f"cannot read archive {zip_path}: {exc}") from exc
    return _ZIPS[key]


def _zip_info(zip_path: str, member: str) -> zipfile.ZipInfo:
    try:
        return _open_zip(zip_path).getinfo(member)
    except KeyError:
        raise DataError(f"image named in the annotations not found: {member} in {zip_path}") from None


def _declared_sizes(zip_path: str) -> dict[str, int]:
    """Member name -> declared (uncompressed) size, read afresh from the archive's directory (not
    from the per-process cache, which may hold an older state of the file)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            return {info.filename: info.file_size for info in zf.infolist()}
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read archive {zip_path}: {exc}") from exc


def _copy_zip_member(zip_path: str, member: str, target: Path, limit: int) -> None:
    """Stream a member to ``target`` in chunks, its declared size checked against ``limit`` first
    and its real output against its declaration."""
    info = _zip_info(zip_path, member)
    name = f"{zip_path}:{member}"
    check_declared(name, info.file_size, limit, "--max-file-mb")
    try:
        with _open_zip(zip_path).open(info) as src, open(target, "wb") as dst:
            copy_bounded(src, dst, info.file_size, name)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise DataError(f"cannot read archive {zip_path} (member {member}): {exc}") from exc


def _image_job(image_id: str, src: tuple[str, str, str], img_out: str, mask_out: str, height: int, width: int,
               anns: list[dict], cat_index: dict[int, int], cfg: dict, max_file: int, where: str) -> str:
    """Place one image (src = ('dir', folder, file name) or ('zip', archive, member)), check its real
    size against the declared one, and write its mask."""
    config = CocoMaskConfig(**cfg)
    if not Path(img_out).is_file():
        kind, folder_or_zip, name = src
        with atomic_path(img_out) as tmp:
            if kind == "zip":
                _copy_zip_member(folder_or_zip, name, tmp, max_file)
            else:
                path = Path(folder_or_zip) / name
                if not path.is_file():
                    raise DataError(f"image named in the annotations not found: {path}")
                check_declared(str(path), path.stat().st_size, max_file, "--max-file-mb")
                _place_image(path, tmp, config.images)
            check_real_size(tmp, height, width, where)
    else:
        check_real_size(img_out, height, width, where)
    if not Path(mask_out).is_file():
        mask = semantic_mask(anns, height, width, cat_index, config, image_id)
        save_mask_png(mask_out, mask, voc_palette())
    return image_id


# ----------------------------------------------------------------------------------------------
# preparation
# ----------------------------------------------------------------------------------------------


def _load_instances(coco: Path, split: str, limits: ExtractionLimits = DEFAULT_LIMITS) -> tuple[dict, str]:
    """The instances JSON of ``split`` from ``annotations/`` or ``annotations_trainval2014.zip``,
    its size checked against ``limits.max_annotation`` before it is read and every field tagseg
    uses validated (:mod:`tagseg.data.prepare.coco_checks`); also a name for messages."""
    path, archive = coco / "annotations" / f"instances_{split}2014.json", coco / "annotations_trainval2014.zip"
    member = f"annotations/instances_{split}2014.json"
    try:
        if path.is_file():
            name = str(path)
            check_declared(name, path.stat().st_size, limits.max_annotation, "--max-annotation-mb")
            with path.open("rb") as fh:
                data = json.load(fh)
        elif archive.is_file():
            name = f"{archive}:{member}"
            with zipfile.ZipFile(archive) as zf:
                info = zf.getinfo(member)
                check_declared(name, info.file_size, limits.max_annotation, "--max-annotation-mb")
                with zf.open(info) as fh:
                    data = json.load(fh)
        else:
            raise DataError(f"annotation file not found: {path} (nor {archive}). {WHERE_TO_GET}")
    except KeyError:
        raise DataError(f"{archive} has no {member}") from None
    except RecursionError:
        raise DataError(f"cannot read {path if path.is_file() else archive}: JSON nested too deeply") from None
    except (OSError, ValueError, EOFError, zlib.error, NotImplementedError, zipfile.BadZipFile) as exc:
        text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read {path if path.is_file() else archive}: {text}") from exc
    validate_instances(data, name, max_image_pixels())
    return data, name


def _image_source(coco: Path, split: str) -> tuple[str, str, str]:
    """('dir', folder, '') for an extracted ``train2014/``, ('zip', archive, 'train2014/') for the zip."""
    folder, archive = coco / f"{split}2014", coco / f"{split}2014.zip"
    if folder.is_dir():
        return "dir", str(folder), ""
    if archive.is_file():
        return "zip", str(archive), f"{split}2014/"
    raise DataError(f"COCO images not found: neither {folder} nor {archive}. {WHERE_TO_GET}")


def _category_index(data: dict, path: str) -> dict[int, int]:
    cats = sorted((c["id"], c["name"]) for c in data["categories"])  # types checked by validate_instances
    if tuple(cats) != COCO_CATEGORIES:
        raise DataError(f"{path}: its {len(cats)} categories differ from COCO's 80 (ids and names in ascending "
                        "id order)")
    return {cat_id: i + 1 for i, (cat_id, _) in enumerate(cats)}


def shipped_val_part() -> Optional[Path]:
    """The packaged 5,000-id val_part list, or None when this tagseg does not ship it."""
    ref = resources.files("tagseg.data.prepare") / "lists" / "coco_val_part.txt"
    return Path(str(ref)) if ref.is_file() else None


VAL_PART_SIZE = 5000


def derive_val_part(val_ids: list[str]) -> Optional[list[str]]:
    """The field's 5,000-image val_part: the first 5,000 ids of the sorted standard val list.

    It equals rulixiang/ToCo's ``datasets/coco/val_part.txt`` (same ids, same order; its sha256 is
    ``COCO_STANDARD_LISTS['val_part']``, checked by the verification). Derived only from a val list
    of the standard 40,137 ids (None otherwise, e.g. under ``keep_unannotated``): the first ids of
    another list are another sample.
    """
    if len(set(val_ids)) != COCO_STANDARD_LISTS["val"].count:
        return None
    return sorted(set(val_ids))[:VAL_PART_SIZE]


def load_val_part(path: Optional[str | Path]) -> Optional[list[str]]:
    """Ids of the val_part list: ``path``, else the shipped list, else None (not available)."""
    src = Path(path) if path else shipped_val_part()
    if src is None:
        return None
    if not src.is_file():
        raise DataError(f"val_part list not found: {src}")
    ids = [line.strip() for line in src.read_text().splitlines() if line.strip()]
    for i in ids:
        check_id(i, str(src))
    return ids


def coco_expectations(cfg: CocoMaskConfig, custom: bool = False) -> dict[str, ListExpectation]:
    """The standard lists' counts/checksums; with keep_unannotated, only the full image counts;
    custom (a partial or custom set in COCO's layout): the lists must exist, their counts and
    checksums are not compared."""
    if custom:
        return {"train": ListExpectation(), "val": ListExpectation(), "val_part": ListExpectation()}
    if not cfg.keep_unannotated:
        return dict(COCO_STANDARD_LISTS)
    return {"train": ListExpectation(ALL_IMAGES_COUNTS["train"]), "val": ListExpectation(ALL_IMAGES_COUNTS["val"]),
            "val_part": COCO_STANDARD_LISTS["val_part"]}


def verify_coco(out: str | Path, expected: Optional[dict[str, ListExpectation]] = None,
                workers: int = 0) -> VerifyReport:
    """Check a prepared COCO tree: counts and checksums of train / val (/ val_part when present),
    train ∩ val = ∅, val_part ⊆ val, images and masks (values 0..80 ∪ {255}), labels."""
    return verify_tree(out, COCO_LAYOUT, COCO_CLASSES, expected or COCO_STANDARD_LISTS,
                       disjoint=[("train", "val")], subsets=[("val_part", "val")], optional=["val_part"],
                       workers=workers)


def prepare_coco(coco: str | Path, out: str | Path, cfg: Optional[CocoMaskConfig] = None, workers: int = 0,
                 val_part: Optional[str | Path] = None, expected: Optional[dict[str, ListExpectation]] = None,
                 verify: bool = True, limits: ExtractionLimits = DEFAULT_LIMITS, custom: bool = False) -> PrepareResult:
    """Build the COCO tree under ``out`` from the extracted COCO 2014 folder ``coco`` and verify it.

    expected: counts/checksums for the verification (default: the standard lists, see
    :func:`coco_expectations`). limits: bounds on annotation files and on the images taken from
    the zips (tagseg.data.prepare.archives). Raises DataError for unreadable or malformed inputs
    (one line naming the file, record and field), inputs over the limits, or a failed verification.
    """
    cfg = cfg or CocoMaskConfig()
    validate_mask_config(cfg)
    start = time.perf_counter()
    coco, out = Path(coco), Path(out)
    if not coco.is_dir():
        raise DataError(f"COCO folder not found: {coco}. {WHERE_TO_GET}")
    # before the long work: a wrong path fails at once; a custom set gets val_part only when given one
    part = load_val_part(val_part) if val_part or not custom else None
    make_output_folder(out)
    workers = resolve_workers(workers)
    with output_lock(out):
        manifest_path = out / "prepare.json"
        if manifest_path.is_file():
            try:
                previous = json.loads(manifest_path.read_text()).get("mask_config")
            except (OSError, ValueError, AttributeError):
                previous = None
            if previous is not None and previous != asdict(cfg):
                raise DataError(f"{out} was prepared with other mask settings {previous}; use another --out "
                                f"or delete it (asked: {asdict(cfg)})")
        write_json(manifest_path, {"dataset": "coco2014", "command": "tagseg prepare coco", "complete": False,
                                   "mask_config": asdict(cfg)})
        lists: dict[str, list[str]] = {}
        labels: dict[str, list[int]] = {}
        written = skipped = 0
        for split in ("train", "val"):
            data, ann_path = _load_instances(coco, split, limits)
            src_kind, src_where, src_prefix = _image_source(coco, split)
            cat_index = _category_index(data, ann_path)
            by_image: dict[int, list[dict]] = {}
            for ann in data["annotations"]:
                if ann.get("category_id") not in cat_index:
                    raise DataError(f"{ann_path}: annotation {ann.get('id')} has unknown category "
                                    f"{ann.get('category_id')}")
                by_image.setdefault(ann.get("image_id"), []).append(ann)
            ids, jobs, archive_bytes = [], [], 0
            declared = _declared_sizes(src_where) if src_kind == "zip" else {}
            for img in data["images"]:
                file_name = str(img.get("file_name", ""))
                where = f"{ann_path} image {img.get('id')}"
                if PurePosixPath(file_name).name != file_name or "\\" in file_name:
                    raise DataError(f"{where}: file_name {file_name[:60]!r} is not a plain file name")
                image_id = check_id(Path(file_name).stem, where)
                check_list_id(image_id, where)
                anns = by_image.get(img.get("id"), [])
                if not anns and not cfg.keep_unannotated:
                    continue
                ids.append(image_id)
                labels[image_id] = image_classes(anns, cat_index, cfg.labels_include_crowd)
                img_out = out / COCO_LAYOUT.images_dir / f"{image_id}.jpg"
                mask_out = out / COCO_LAYOUT.masks_dir / f"{image_id}.png"
                if img_out.is_file() and mask_out.is_file():
                    skipped += 1
                    continue
                if src_kind == "zip" and not img_out.is_file():  # bounded before anything is written
                    member = src_prefix + file_name
                    if member not in declared:
                        raise DataError(f"image named in the annotations not found: {member} in {src_where}")
                    check_declared(f"{src_where}:{member}", declared[member], limits.max_file, "--max-file-mb")
                    archive_bytes += declared[member]
                    if archive_bytes > limits.max_archive:
                        raise DataError(f"{src_where}: the images used add up to more than the limit of "
                                        f"{limits.max_archive / 2**30:,.2f} GB (a decompression-bomb guard; raise "
                                        "--max-archive-gb if the archive is trusted)")
                jobs.append((image_id, (src_kind, src_where, src_prefix + file_name), str(img_out), str(mask_out),
                             img["height"], img["width"], anns, cat_index, asdict(cfg), limits.max_file, where))
            if len(set(ids)) != len(ids):
                raise DataError(f"{ann_path}: duplicate image file names")
            lists[split] = sorted(ids)
            del data, by_image
            for _ in tqdm(run_jobs(_image_job, jobs, workers), total=len(jobs), desc=f"COCO {split}2014",
                          unit="img", leave=False, mininterval=1.0, disable=not jobs):
                written += 1
        notes = []
        if part is not None:
            outside = sorted(set(part) - set(lists["val"]))
            if outside:
                raise DataError(f"{len(outside)} val_part ids are not in the val list: {outside[:5]}")
            lists["val_part"] = sorted(set(part))
        elif (derived := derive_val_part(lists["val"])) is not None:
            lists["val_part"] = derived
            notes.append("val_part derived: the first 5,000 ids of the sorted val list (checked against its sha256)")
        elif custom:
            notes.append("custom set: val_part not written (pass --val-part FILE for one); lists checked for "
                         "structure, not against the standard COCO lists")
        else:
            notes.append(f"val_part not written: it is derived from the standard {COCO_STANDARD_LISTS['val'].count:,}-id "
                          f"val list and this val list has {len(lists['val']):,} ids; pass --val-part FILE")
        write_image_labels(out / COCO_LAYOUT.labels_file, COCO_CLASSES, labels)
        write_text(out / "classes.txt", "".join(f"{n}\n" for n in COCO_CLASSES))
        for name, ids in lists.items():
            write_text(out / COCO_LAYOUT.lists_dir / f"{name}.txt", "".join(f"{i}\n" for i in ids))
        write_json(manifest_path, {"dataset": "coco2014", "command": "tagseg prepare coco", "complete": True,
                                   "mask_config": asdict(cfg), "counts": {k: len(v) for k, v in lists.items()}})
    result = PrepareResult(out, {k: len(v) for k, v in lists.items()}, written, skipped, notes=notes)
    if verify:
        result.report = verify_coco(out, expected or coco_expectations(cfg, custom), workers)
        result.report.raise_if_failed()
    result.seconds = time.perf_counter() - start
    return result
