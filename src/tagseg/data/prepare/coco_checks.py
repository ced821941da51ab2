"""Validate the fields of a COCO instances file that ``tagseg prepare coco`` reads, before use.

Annotation files are untrusted (hand-edited, truncated, hostile): every field tagseg uses is
checked for presence, type, finiteness and range, and the first problem is a DataError on one
line naming the file, the record (``images[3] (id 100)``) and the field. Declared image sizes
are bounded by the pixel limit here, and compared with the real image when it is placed
(:func:`check_real_size`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from PIL import Image

from tagseg.errors import DataError

MAX_SIDE = 65_535  # pixels: larger than any photograph, and what PIL's PNG writer accepts
COORD_MARGIN = 10  # a polygon may reach this many image sides beyond the image (sloppy annotations)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _where(file: str, table: str, index: int, record: Any) -> str:
    rid = record.get("id") if isinstance(record, dict) else None
    ident = f" (id {rid!r})" if _is_int(rid) or isinstance(rid, str) else ""
    return f"{file}: {table}[{index}]{ident}"


def _need(record: dict, key: str, where: str, check, expected: str) -> Any:
    if key not in record:
        raise DataError(f"{where}: field {key!r} is missing ({expected})")
    value = record[key]
    if not check(value):
        shown = repr(value) if isinstance(value, (int, float, str, bool)) or value is None else _kind(value)
        raise DataError(f"{where}: field {key!r} is {shown[:60]}, expected {expected}")
    return value


def _side(v: Any) -> bool:
    return _is_int(v) and 1 <= v <= MAX_SIDE


def validate_instances(data: Any, file: str, max_pixels: int) -> None:
    """Check ``data`` (a parsed instances JSON) field by field; DataError at the first problem.

    images: id (integer, unique), file_name (non-empty text), width / height (integers 1..65535,
    width × height <= ``max_pixels``); categories: id (integer), name (text); annotations: id,
    image_id, category_id (integers), iscrowd (0 / 1, optional), segmentation (polygons: lists of
    an even number of finite coordinates near the image; or RLE: ``size`` [h, w] equal to the
    image's and ``counts`` a list of non-negative integers or a string).
    """
    if not isinstance(data, dict):
        raise DataError(f"{file}: not a COCO instances file (the top level is a {_kind(data)}, not an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{file}: not a COCO instances file (needs lists 'images', 'annotations', "
                            f"'categories'; {key!r} is {_kind(data.get(key))})")
    for i, cat in enumerate(data["categories"]):
        where = _where(file, "categories", i, cat)
        if not isinstance(cat, dict):
            raise DataError(f"{where}: is a {_kind(cat)}, expected an object")
        _need(cat, "id", where, _is_int, "an integer")
        _need(cat, "name", where, lambda v: isinstance(v, str), "text")
    sizes: dict[int, tuple[int, int]] = {}
    for i, img in enumerate(data["images"]):
        where = _where(file, "images", i, img)
        if not isinstance(img, dict):
            raise DataError(f"{where}: is a {_kind(img)}, expected an object")
        image_id = _need(img, "id", where, _is_int, "an integer")
        if image_id in sizes:
            raise DataError(f"{where}: image id {image_id} appears twice")
        _need(img, "file_name", where, lambda v: isinstance(v, str) and v.strip() != "", "a file name")
        width = _need(img, "width", where, _side, f"an integer 1..{MAX_SIDE}")
        height = _need(img, "height", where, _side, f"an integer 1..{MAX_SIDE}")
        if width * height > max_pixels:
            raise DataError(f"{where}: declares {width}x{height} = {width * height:,} pixels, more than the limit of "
                            f"{max_pixels:,} (a decompression-bomb guard; raise data.max_image_pixels if trusted)")
        sizes[image_id] = (height, width)
    for i, ann in enumerate(data["annotations"]):
        where = _where(file, "annotations", i, ann)
        if not isinstance(ann, dict):
            raise DataError(f"{where}: is a {_kind(ann)}, expected an object")
        _need(ann, "id", where, _is_int, "an integer")
        image_id = _need(ann, "image_id", where, _is_int, "an integer")
        _need(ann, "category_id", where, _is_int, "an integer")
        if "iscrowd" in ann:
            _need(ann, "iscrowd", where, lambda v: v in (0, 1) and isinstance(v, (int, bool)), "0 or 1")
        seg = _need(ann, "segmentation", where, lambda v: isinstance(v, (list, dict)),
                    "polygons (a list) or RLE (an object)")
        size = sizes.get(image_id)
        if size is None:
            continue  # an annotation of an image not in this file is never used
        if isinstance(seg, list):
            _check_polygons(seg, size, where)
        else:
            _check_rle(seg, size, where)


def _check_polygons(polys: list, size: tuple[int, int], where: str) -> None:
    height, width = size
    for j, poly in enumerate(polys):
        field = f"field 'segmentation'[{j}]"
        if not isinstance(poly, list) or len(poly) % 2:
            raise DataError(f"{where}: {field} must be a flat list of x, y numbers (an even count)")
        for k, v in enumerate(poly):
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise DataError(f"{where}: {field}[{k}] is {_kind(v)}, expected a number")
            if not math.isfinite(v):
                raise DataError(f"{where}: {field}[{k}] is {v}, expected a finite number")
            side = width if k % 2 == 0 else height
            if not -COORD_MARGIN * side <= v <= (COORD_MARGIN + 1) * side:
                raise DataError(f"{where}: {field}[{k}] = {v:g} lies far outside the {width}x{height} image")


def _check_rle(rle: dict, size: tuple[int, int], where: str) -> None:
    height, width = size
    got = rle.get("size")
    if not (isinstance(got, list) and len(got) == 2 and all(_is_int(v) for v in got)):
        raise DataError(f"{where}: field 'segmentation.size' must be [height, width] integers")
    if list(got) != [height, width]:
        raise DataError(f"{where}: field 'segmentation.size' {got} differs from the image's {[height, width]}")
    counts = rle.get("counts")
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts):
            raise DataError(f"{where}: field 'segmentation.counts' must hold non-negative integers")
        if sum(counts) != height * width:
            raise DataError(f"{where}: field 'segmentation.counts' adds up to {sum(counts):,} pixels, not "
                            f"{height}x{width}")
    elif isinstance(counts, str):
        rle_string_counts(counts, height * width, where)
    else:
        raise DataError(f"{where}: field 'segmentation.counts' is {_kind(counts)}, expected a list or a string")


def rle_string_counts(text: str, pixels: int, where: str) -> list[int]:
    """The run lengths of COCO's compressed RLE string (6-bit groups offset from '0', 5 data bits
    and a continuation bit each, sign-extended; from the third run on, stored as the difference
    to the run two before). DataError unless it decodes to non-negative runs covering exactly
    ``pixels`` pixels -- pycocotools itself accepts such strings and returns arbitrary masks."""
    runs: list[int] = []
    pos, total = 0, 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise DataError(f"{where}: field 'segmentation.counts' is a truncated compressed RLE string")
            code = ord(text[pos]) - 48
            if not 0 <= code < 64:
                raise DataError(f"{where}: field 'segmentation.counts' holds {text[pos]!r}, not compressed RLE")
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            pos += 1
            shift += 5
            if shift > 60:
                raise DataError(f"{where}: field 'segmentation.counts' holds an impossibly long run")
            if not more and code & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise DataError(f"{where}: field 'segmentation.counts' decodes to a negative run")
        runs.append(value)
        total += value
        if total > pixels:
            break
    if total != pixels:
        raise DataError(f"{where}: field 'segmentation.counts' covers {total:,} pixels, not the image's {pixels:,}")
    return runs


def check_real_size(path: str | Path, height: int, width: int, where: str) -> None:
    """DataError when the image at ``path`` is not ``width`` × ``height`` as its record declares
    (read from the file's header only)."""
    try:
        with Image.open(path) as im:
            real = im.size
    except Exception as exc:  # PIL raises many types on hostile bytes
        raise DataError(f"{where}: cannot read image {path}: {type(exc).__name__}: {exc}") from exc
    if real != (width, height):
        raise DataError(f"{where}: declares {width}x{height} but the image {Path(path).name} is {real[0]}x{real[1]}")
