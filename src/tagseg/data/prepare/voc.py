"""PASCAL VOC 2012 + SBD -> ``SegmentationClassAug``, the standard lists and image-level labels.

Inputs (folders or the original archives, read in one streaming pass each):

- VOC 2012 (``VOCtrainval_11-May-2012.tar``): ``JPEGImages/*.jpg``, ``SegmentationClass/*.png``,
  ``Annotations/*.xml``, ``ImageSets/Segmentation/{train,val}.txt``;
- SBD (``benchmark.tgz``): ``dataset/cls/*.mat`` (struct ``GTcls`` with field ``Segmentation``,
  class indices 0..20) and ``dataset/{train,val}.txt``.

Output (the layout :func:`tagseg.data.voc.read_voc` reads)::

    out/JPEGImages/<id>.jpg                   the VOC photographs, byte for byte
    out/SegmentationClassAug/<id>.png         8-bit palette PNGs; VOC's mask where it has one, else SBD's
    out/ImageSets/Segmentation/train_aug.txt  (VOC train ∪ SBD train ∪ SBD val) − VOC val
    out/ImageSets/Segmentation/{train,val}.txt  VOC 2012's lists
    out/cls_labels.json                       image-level labels (tagseg.data.image_labels)
    out/cls_labels.npy                        only with write_cls_labels_npy (the field's pickled dict)
    out/prepare.json                          what was done, with which settings

Every file is written atomically and skipped when it already exists, so an interrupted run is
resumed by running it again.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import struct
import tempfile
import time
import warnings
import zlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Optional

import numpy as np
from filelock import FileLock, Timeout
from PIL import Image
from tqdm import tqdm

from tagseg.data.classes import IGNORE_INDEX, VOC_CLASSES, voc_palette
from tagseg.data.image_labels import write_image_labels
from tagseg.data.prepare.archives import (DEFAULT_LIMITS, ExtractionLimits, Payload, discard, iter_source,
                                          move_payload, payload_name, read_payload)
from tagseg.data.prepare.parallel import resolve_workers, run_jobs
from tagseg.data.prepare.verify import VOC_STANDARD_LISTS, ListExpectation, TreeLayout, VerifyReport, verify_tree
from tagseg.errors import DataError, OutputError
from tagseg.utils.io import (atomic_path, max_image_pixels, output_root, read_mask, save_mask_png, write_json,
                             write_text)
from tagseg.utils.safe_paths import check_list_id, refuse_links_out

VOC_ID = re.compile(r"[0-9]{4}_[0-9]{6}")
CUSTOM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # ids of a custom set (--custom): plain file stems
VOC_LAYOUT = TreeLayout(lists_dir="ImageSets/Segmentation", images_dir="JPEGImages",
                        masks_dir="SegmentationClassAug")

WHERE_TO_GET = (
    "VOC 2012: VOCtrainval_11-May-2012.tar from the PASCAL VOC 2012 challenge page (host.robots.ox.ac.uk); "
    "SBD: benchmark.tgz from the Semantic Boundaries Dataset page of the Berkeley vision group (BSDS/SBD "
    "'Semantic Contours from Inverse Detectors'). tagseg never downloads them itself."
)


@dataclass
class PrepareResult:
    """What a prepare run did: output root, list sizes, files written / already present, seconds."""

    out: Path
    counts: dict[str, int]
    written: int = 0
    skipped: int = 0
    seconds: float = 0.0
    report: Optional[VerifyReport] = None
    notes: list[str] = field(default_factory=list)


def make_output_folder(out: Path) -> None:
    """Create ``out`` (and its parents); OutputError naming it when that is impossible (a file of
    that name, no permission, a read-only file system)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {out}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def output_lock(out: Path):
    """Hold ``out/.prepare.lock`` so that two runs never write one tree at the same time, and clear
    what a killed run left half-written. Refuses a tree holding a folder linked to somewhere
    outside it, and checks every write made meanwhile (tagseg.utils.io.output_root)."""
    refuse_links_out(out, folders_only=True)  # image files may be links (images=symlink); folders may not
    lock_path = out / ".prepare.lock"
    if lock_path.is_symlink():
        raise DataError(f"{lock_path} is a symbolic link; remove it (tagseg does not write through links)")
    lock = FileLock(str(lock_path), timeout=0.5)
    try:
        lock.acquire()
    except Timeout:
        raise DataError(f"{out} is being prepared by another process (lock {out / '.prepare.lock'})") from None
    try:
        _remove_stale_temporaries(out)
        with output_root(out):
            yield
    finally:
        lock.release()


@contextlib.contextmanager
def staging_folder(out: Path):
    """A fresh ``out/.staging.*`` folder for archive members on their way to the tree (same file
    system, so they are renamed into place), removed afterwards whatever happens."""
    folder = Path(tempfile.mkdtemp(prefix=".staging.", dir=out))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _remove_stale_temporaries(out: Path) -> None:
    """Delete temporary files (``.<name>.*.tmp*``, see tagseg.utils.io.atomic_path) and staging
    folders that a killed run left behind; safe because the lock is held. Finished files are
    never touched."""
    for stale in out.glob(".staging.*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    for folder in [out, *(p for p in out.rglob("*") if p.is_dir() and not p.is_symlink())]:
        for tmp in folder.glob(".*.tmp*"):
            if tmp.is_file() or tmp.is_symlink():
                tmp.unlink()


def _voc_key(name: PurePosixPath, custom: bool = False) -> Optional[tuple[str, str]]:
    """What a VOC source member is: ('list', train|val), ('image'|'mask'|'xml', id) or None.
    custom: also train_aug.txt and SegmentationClassAug masks, and any plain id (not only 2008_000123)."""
    parts = name.parts
    lists = ("train.txt", "val.txt", "train_aug.txt") if custom else ("train.txt", "val.txt")
    if len(parts) >= 3 and parts[-3:-1] == ("ImageSets", "Segmentation") and parts[-1] in lists:
        return ("list", parts[-1][:-4])
    if len(parts) < 2:
        return None
    folder, stem, suffix = parts[-2], PurePosixPath(parts[-1]).stem, PurePosixPath(parts[-1]).suffix
    if not (CUSTOM_ID if custom else VOC_ID).fullmatch(stem) or ".." in stem:
        return None
    kinds = {("JPEGImages", ".jpg"): "image", ("SegmentationClass", ".png"): "mask", ("Annotations", ".xml"): "xml"}
    if custom:
        kinds[("SegmentationClassAug", ".png")] = "mask"
    kind = kinds.get((folder, suffix))
    return (kind, stem) if kind else None


def _custom_voc_key(name: PurePosixPath) -> Optional[tuple[str, str]]:
    return _voc_key(name, custom=True)


def _sbd_key(name: PurePosixPath) -> Optional[tuple[str, str]]:
    parts = name.parts
    if len(parts) >= 2 and parts[-2] == "dataset" and parts[-1] in ("train.txt", "val.txt"):
        return ("list", parts[-1][:-4])
    if len(parts) >= 3 and parts[-3:-1] == ("dataset", "cls") and parts[-1].endswith(".mat"):
        stem = parts[-1][:-4]
        return ("mat", stem) if VOC_ID.fullmatch(stem) else None
    return None


def parse_id_list(data: bytes, name: str, custom: bool = False) -> list[str]:
    """Ids of a VOC/SBD list file (one per line); DataError naming the file and line otherwise.
    custom: any plain id (letters, digits, '_', '-', '.') instead of VOC's 2008_000123 form."""
    ids = []
    for line_no, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if custom:
            check_list_id(line, name, line_no)
            if not CUSTOM_ID.fullmatch(line):
                raise DataError(f"{name}:{line_no}: {line[:40]!r} is not a plain id (letters, digits, _ - .)")
        elif not VOC_ID.fullmatch(line):
            raise DataError(f"{name}:{line_no}: {line[:40]!r} is not a VOC id (like 2008_000123)"
                            + ("; for a custom set use --custom" if " " not in line else ""))
        ids.append(line)
    return ids


def parse_voc_xml(data: bytes, name: str) -> set[int]:
    """Object class indices (1..20) named by a VOC annotation XML (every <object>, difficult ones too)."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise DataError(f"cannot parse annotation {name}: {exc}") from exc
    lookup = {n: i for i, n in enumerate(VOC_CLASSES)}
    found = set()
    for obj in root.findall("object"):
        cls = (obj.findtext("name") or "").strip()
        if cls not in lookup or lookup[cls] == 0:
            raise DataError(f"annotation {name}: unknown object class {cls[:40]!r}")
        found.add(lookup[cls])
    return found


def _check_values(mask: np.ndarray, name: str, num_classes: int) -> np.ndarray:
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != IGNORE_INDEX)]
    if bad.size:
        raise DataError(f"mask {name} has values {bad.tolist()} outside 0..{num_classes - 1} and {IGNORE_INDEX}")
    return mask.astype(np.uint8)


def decode_png_mask(data: bytes, name: str, num_classes: int = len(VOC_CLASSES)) -> np.ndarray:
    """A class-index PNG (palette or grayscale) -> uint8 (H, W); DataError on other modes or values."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.size[0] * im.size[1] > max_image_pixels():
                    raise DataError(f"mask {name} is {im.size[0]}x{im.size[1]} pixels, more than the limit of "
                                    f"{max_image_pixels():,} (a decompression-bomb guard)")
                im.load()
                if im.mode not in ("P", "L"):
                    raise DataError(f"mask {name} has mode {im.mode!r}; expected an 8-bit class-index PNG")
                arr = np.asarray(im)
    except DataError:
        raise
    except Exception as exc:  # PIL raises many types on hostile bytes (DecompressionBombError included)
        raise DataError(f"cannot decode mask {name}: {type(exc).__name__}: {exc}") from exc
    return _check_values(arr, name, num_classes)


def check_mat_expansion(data: bytes, name: str, limit: int) -> None:
    """DataError when the zlib-compressed elements of a MATLAB v5 file would expand to more than
    ``limit`` bytes in all. Decompressed in bounded chunks that are counted and dropped, before
    scipy (which inflates a whole element at once) sees the file."""
    pos, total = 128, 0  # the 128-byte header, then elements: uint32 type, uint32 byte count, data
    order = "<" if data[126:128] == b"IM" else ">"
    while pos + 8 <= len(data):
        kind, nbytes = struct.unpack(order + "II", data[pos:pos + 8])
        if kind & 0xFFFF0000:  # "small data element": 4 bytes of data packed beside the tag
            pos += 8
            continue
        body = data[pos + 8:pos + 8 + nbytes]
        if kind == 15:  # miCOMPRESSED
            inflater = zlib.decompressobj()
            chunk = inflater.decompress(body, CHUNK_BYTES)
            while chunk:
                total += len(chunk)
                if total > limit:
                    raise DataError(f"SBD file {name} expands to more than {limit:,} bytes (a decompression-bomb "
                                    "guard; raise data.max_image_pixels if the file is trusted)")
                chunk = inflater.decompress(inflater.unconsumed_tail, CHUNK_BYTES)
        pos += 8 + nbytes + (-nbytes % 8 if kind != 15 else 0)


CHUNK_BYTES = 1 << 20


def decode_sbd_mat(data: bytes, name: str, num_classes: int = len(VOC_CLASSES)) -> np.ndarray:
    """SBD ``cls/<id>.mat`` -> uint8 (H, W) class indices, from ``GTcls.Segmentation``."""
    from scipy.io import loadmat

    check_mat_expansion(data, name, 2 * max_image_pixels())
    try:
        mat = loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False)
    except Exception as exc:  # scipy raises many types (MatReadError, ValueError, ...) on a broken file
        raise DataError(f"cannot read SBD file {name}: {exc}") from exc
    gt = mat.get("GTcls")
    seg = getattr(gt, "Segmentation", None)
    if seg is None:
        raise DataError(f"SBD file {name} has no GTcls.Segmentation (is it from dataset/cls/?)")
    seg = np.asarray(seg)
    if seg.ndim != 2 or seg.size == 0 or not np.issubdtype(seg.dtype, np.integer):
        raise DataError(f"SBD file {name}: GTcls.Segmentation is {seg.dtype} {seg.shape}, expected a 2-D "
                        "integer array")
    return _check_values(seg, name, num_classes)


def _write_mask_job(kind: str, payload: Payload, out_path: str, member: str,
                    limit: int = DEFAULT_LIMITS.max_file) -> str:
    data = read_payload(payload, limit)
    name = payload_name(payload, member)
    mask = decode_sbd_mat(data, name) if kind == "mat" else decode_png_mask(data, name)
    save_mask_png(out_path, mask, voc_palette())
    return out_path


def _copy_job(payload: Payload, out_path: str) -> str:
    with atomic_path(out_path) as tmp:
        move_payload(payload, tmp)
    return out_path


def _labels_from_mask_job(image_id: str, mask_path: str) -> tuple[str, list[int]]:
    mask = read_mask(mask_path, len(VOC_CLASSES))
    values = np.unique(mask)
    return image_id, [int(v) for v in values if 0 < v < len(VOC_CLASSES)]


def _dispatch(kind: str, *args):
    if kind == "copy":
        return _copy_job(*args)
    if kind == "labels":
        return _labels_from_mask_job(*args)
    return _write_mask_job(kind, *args)


def custom_expectations(out: str | Path) -> dict[str, ListExpectation]:
    """For a custom set (--custom): val and train_aug must be there, train when the tree has it;
    their counts and checksums are not compared with the standard lists'."""
    names = ["train_aug", "val"] + (["train"] if (Path(out) / VOC_LAYOUT.lists_dir / "train.txt").is_file() else [])
    return {name: ListExpectation() for name in names}


def verify_voc(out: str | Path, expected: Optional[dict[str, ListExpectation]] = None,
               workers: int = 0) -> VerifyReport:
    """Check a prepared VOC tree (see :func:`tagseg.data.prepare.verify.verify_tree`): counts and
    checksums of train_aug / train / val (default: the standard lists'), train_aug ∩ val = ∅,
    train ∩ val = ∅, train ⊆ train_aug, images and masks."""
    expected = VOC_STANDARD_LISTS if expected is None else expected
    return verify_tree(out, VOC_LAYOUT, VOC_CLASSES, expected, disjoint=[("train_aug", "val"), ("train", "val")],
                       subsets=[("train", "train_aug")], workers=workers)


def prepare_voc(voc: str | Path, sbd: Optional[str | Path], out: str | Path, workers: int = 0,
                labels_from: str = "auto", write_cls_labels_npy: bool = False,
                expected: Optional[dict[str, ListExpectation]] = None, verify: bool = True,
                limits: ExtractionLimits = DEFAULT_LIMITS, custom: bool = False) -> PrepareResult:
    """Build the VOC 2012 + SBD tree under ``out`` (module docstring) and verify it.

    labels_from: 'xml' (VOC's Annotations: every annotated object), 'masks' (the classes with
    pixels in SegmentationClassAug) or 'auto' (XML where present, else the mask).
    expected: the list counts/checksums the verification demands (default: the standard lists).
    limits: bounds on the members taken from the sources (tagseg.data.prepare.archives).
    custom: a partial or custom set in VOC's layout: SBD optional, ids of any plain form, lists
    ``val`` and ``train`` and/or ``train_aug`` (ImageSets/Segmentation), masks in
    SegmentationClass or SegmentationClassAug; the structure is verified (lists, overlaps, every
    image with a mask of its size, labels), not the standard lists' counts and checksums.
    Raises DataError for unreadable inputs, missing parts, members over the limits, or a failed
    verification.
    """
    if labels_from not in ("auto", "xml", "masks"):
        raise DataError(f"labels_from={labels_from!r}: choose auto, xml or masks")
    if sbd is None and not custom:
        raise DataError(f"give the SBD source too (or --custom for a set without it). {WHERE_TO_GET}")
    key_of = _custom_voc_key if custom else _voc_key
    start = time.perf_counter()
    out = Path(out)
    make_output_folder(out)
    workers = resolve_workers(workers)
    images_dir, masks_dir = out / VOC_LAYOUT.images_dir, out / VOC_LAYOUT.masks_dir
    with output_lock(out), staging_folder(out) as staging:
        voc_lists: dict[str, list[str]] = {}
        sbd_lists: dict[str, list[str]] = {}
        xml_labels: dict[str, set[int]] = {}
        voc_masks: set[str] = set()
        voc_images: set[str] = set()
        sbd_mats: set[str] = set()
        counters = {"written": 0, "skipped": 0}

        def voc_jobs():
            for (kind, key), payload in iter_source(voc, key_of, "VOC 2012", staging, limits):
                member = payload_name(payload, f"{voc}:{key}")
                if kind == "list":
                    voc_lists[key] = parse_id_list(read_payload(payload, limits.max_file), member, custom)
                elif kind == "xml":
                    xml_labels[key] = parse_voc_xml(read_payload(payload, limits.max_file), member)
                elif kind == "image":
                    if key in voc_images:
                        raise DataError(f"{voc}: two images {key}.jpg (give the VOC2012 folder itself)")
                    voc_images.add(key)
                    target = images_dir / f"{key}.jpg"
                    if target.is_file():
                        counters["skipped"] += 1
                        discard(payload)
                    else:
                        yield ("copy", payload, str(target))
                elif kind == "mask":
                    if key in voc_masks:
                        raise DataError(f"{voc}: two masks for {key}")
                    voc_masks.add(key)
                    target = masks_dir / f"{key}.png"
                    if target.is_file():
                        counters["skipped"] += 1
                        discard(payload)
                    else:
                        yield ("mask", payload, str(target), member, limits.max_file)

        def sbd_jobs():
            for (kind, key), payload in iter_source(sbd, _sbd_key, "SBD", staging, limits):
                member = payload_name(payload, f"{sbd}:{key}")
                if kind == "list":
                    sbd_lists[key] = parse_id_list(read_payload(payload, limits.max_file), member, custom)
                    continue
                if key in sbd_mats:
                    raise DataError(f"{sbd}: two files cls/{key}.mat")
                sbd_mats.add(key)
                target = masks_dir / f"{key}.png"
                if key in voc_masks:
                    discard(payload)
                    continue  # VOC's own mask wins where both exist
                if target.is_file():
                    counters["skipped"] += 1
                    discard(payload)
                else:
                    yield ("mat", payload, str(target), member, limits.max_file)

        def all_jobs():
            yield from voc_jobs()
            needed = [("val",), ("train", "train_aug")] if custom else [("train",), ("val",)]
            for names in needed:  # a wrong --voc fails before SBD is read
                if not any(name in voc_lists for name in names):
                    found = " or ".join(f"ImageSets/Segmentation/{name}.txt" for name in names)
                    hint = ("a custom set needs val.txt and train.txt or train_aug.txt" if custom else
                            "give the VOC 2012 folder (VOCdevkit/VOC2012) or VOCtrainval_11-May-2012.tar. "
                            + WHERE_TO_GET)
                    raise DataError(f"{voc}: no {found} found; {hint}")
            if not voc_masks:
                raise DataError(f"{voc}: no SegmentationClass/*.png masks found"
                                + (" (nor SegmentationClassAug/*.png)" if custom else ""))
            if sbd is not None:
                yield from sbd_jobs()

        for _ in run_jobs(_dispatch, all_jobs(), workers):
            counters["written"] += 1

        for name in ("train", "val"):
            if sbd is not None and name not in sbd_lists:
                raise DataError(f"{sbd}: no dataset/{name}.txt found; give SBD's benchmark_RELEASE folder or "
                                f"benchmark.tgz. {WHERE_TO_GET}")
        val = sorted(set(voc_lists["val"]))
        train = sorted(set(voc_lists.get("train", [])))
        extra = set(sbd_lists.get("train", [])) | set(sbd_lists.get("val", [])) | set(voc_lists.get("train_aug", []))
        train_aug = sorted((set(train) | extra) - set(val))
        lists = {"train_aug": train_aug, "train": train, "val": val}
        if custom and "train" not in voc_lists:
            del lists["train"]  # a custom set without VOC's train list: train_aug and val only
        no_mask = sorted(i for i in set(train_aug) | set(val) if i not in voc_masks and i not in sbd_mats)
        if no_mask:
            raise DataError(f"{len(no_mask)} listed ids have neither a VOC mask nor an SBD .mat: {no_mask[:5]}")

        labels, from_masks = _image_labels(sorted(set(train_aug) | set(val)), xml_labels, labels_from,
                                           masks_dir, workers)
        write_image_labels(out / VOC_LAYOUT.labels_file, VOC_CLASSES, labels)
        if write_cls_labels_npy:
            write_field_cls_labels(out / "cls_labels.npy", labels)
        for name, ids in lists.items():
            write_text(out / VOC_LAYOUT.lists_dir / f"{name}.txt", "".join(f"{i}\n" for i in ids))
        notes = []
        if from_masks:
            notes.append(f"labels of {from_masks} images taken from their masks (no annotation XML)")
        if custom:
            notes.append("custom set: the lists were checked for structure, not against the standard VOC lists")
        write_json(out / "prepare.json", {
            "dataset": "voc-custom" if custom else "voc2012+sbd", "command": "tagseg prepare voc", "complete": True,
            "counts": {k: len(v) for k, v in lists.items()}, "voc_masks": len(voc_masks),
            "sbd_masks": len(sbd_mats), "labels_from": labels_from, "labels_from_masks": from_masks,
        })
    result = PrepareResult(out, {k: len(v) for k, v in lists.items()}, counters["written"], counters["skipped"],
                           notes=notes)
    if verify:
        if expected is None:
            expected = custom_expectations(out) if custom else VOC_STANDARD_LISTS
        result.report = verify_voc(out, expected, workers)
        result.report.raise_if_failed()
    result.seconds = time.perf_counter() - start
    return result


def _image_labels(ids: list[str], xml_labels: dict[str, set[int]], labels_from: str, masks_dir: Path,
                  workers: int) -> tuple[dict[str, list[int]], int]:
    """id -> object class indices, from the XML and/or the written masks; also how many from masks."""
    labels: dict[str, list[int]] = {}
    need_masks = []
    for image_id in ids:
        if labels_from != "masks" and image_id in xml_labels:
            labels[image_id] = sorted(xml_labels[image_id])
        elif labels_from == "xml":
            raise DataError(f"no Annotations/{image_id}.xml in the VOC source (labels_from=xml); "
                            "use labels_from=auto or masks")
        else:
            need_masks.append(image_id)
    jobs = [("labels", i, str(masks_dir / f"{i}.png")) for i in need_masks]
    for image_id, classes in tqdm(run_jobs(_dispatch, jobs, workers), total=len(jobs), desc="labels",
                                  leave=False, mininterval=1.0, disable=not jobs):
        labels[image_id] = classes
    return labels, len(need_masks)


def write_field_cls_labels(path: Path, labels: dict[str, list[int]]) -> None:
    """The field's ``cls_labels.npy`` for other tools: a pickled dict int id (2007_000032 ->
    2007000032) -> float32[20] (no background). Written only; tagseg reads cls_labels.json."""
    table = {}
    for image_id, classes in labels.items():
        vec = np.zeros(len(VOC_CLASSES) - 1, dtype=np.float32)
        for c in classes:
            vec[c - 1] = 1.0
        table[int(image_id.replace("_", ""))] = vec
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, table, allow_pickle=True)
