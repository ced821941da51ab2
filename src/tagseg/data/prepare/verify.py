"""Check a prepared dataset tree: list counts and checksums, overlaps, images, masks, labels.

The expected counts and sha256 are parameters, so small test trees are checked by the same code
as the real datasets. The canonical values of the field's standard lists are below. A list's
checksum is the sha256 of its canonical text: ids sorted, unique, one per line, ``\\n`` after each
(the form ``tagseg prepare`` writes).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from PIL import Image
from tqdm import tqdm

from tagseg.data.image_labels import read_image_labels
from tagseg.data.prepare.parallel import resolve_workers, run_jobs
from tagseg.errors import DataError, TagsegError
from tagseg.utils.io import read_mask


@dataclass(frozen=True)
class ListExpectation:
    """What one id list must hold: its number of ids and the sha256 of its canonical text
    (None: not checked)."""

    count: Optional[int] = None
    sha256: Optional[str] = None


# PASCAL VOC 2012 + SBD: the 10,582-image train_aug list, VOC's train and val.
VOC_STANDARD_LISTS: dict[str, ListExpectation] = {
    "train_aug": ListExpectation(10582, "d1326bd532648d73bc4b1bd275434eba81930982dc7401a65a8cecb26c028e24"),
    "train": ListExpectation(1464, "aa623bd2c8ce4443a8aaae51c524c0eb165e8e44caf6aa9e3ad33d7b75a3ef20"),
    "val": ListExpectation(1449, "cdc1326d12f69ce5153aa5da04a4d8783e146868d42d19f82f44e74b97ac907d"),
}

# COCO 2014: images with at least one instance annotation, and the 5,000-image val_part sample.
COCO_STANDARD_LISTS: dict[str, ListExpectation] = {
    "train": ListExpectation(82081, "2985c4b482da49946f2e5dfb9a12f44bee154529cd601f63b1105942d763a8f9"),
    "val": ListExpectation(40137, "6f65de2c151265166b98f2202c9822d6a81f607f2c39e39c01d279d9de690c1a"),
    "val_part": ListExpectation(5000, "c5caf3491caba8a9360665a20f4a8212198aa04a7756280b6ac3759970a6ee33"),
}

MAX_LISTED = 5  # problems of one kind named in a message before "... and N more"


def list_text(ids: Sequence[str]) -> str:
    """The canonical text of an id list: sorted, unique, one id per line, '\\n' after each."""
    return "".join(f"{i}\n" for i in sorted(set(ids)))


def list_sha256(ids: Sequence[str]) -> str:
    """sha256 (hex) of :func:`list_text`."""
    return hashlib.sha256(list_text(ids).encode()).hexdigest()


@dataclass(frozen=True)
class TreeLayout:
    """Where a prepared tree keeps its parts (relative to its root)."""

    lists_dir: str
    images_dir: str
    masks_dir: str
    image_ext: str = ".jpg"
    labels_file: str = "cls_labels.json"


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_tree`: problems (empty = passed), notes, and what was seen."""

    root: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    files_checked: int = 0
    list_mismatches: list[str] = field(default_factory=list)  # the subset of problems: counts / checksums

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        lines = [f"{name}: {n} ids, sha256 {self.sha256[name][:12]}..." for name, n in self.counts.items()]
        lines.append(f"{self.files_checked} image/mask pairs checked")
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"PROBLEM: {p}" for p in self.problems]
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """DataError listing the problems: the real ones first (missing files, overlaps, bad masks),
        then the lists' differences from the expected counts and checksums, summarised on one line."""
        if not self.problems:
            return
        real = [p for p in self.problems if p not in self.list_mismatches]
        counts = [p for p in self.list_mismatches if "sha256" not in p]
        checksums = [p.split(": sha256")[0].rsplit("/", 1)[-1] for p in self.list_mismatches if "sha256" in p]
        summary = []
        if counts or checksums:
            text = "the lists are not the expected ones: " + "; ".join(counts)
            if checksums:
                text += ("; " if counts else "") + f"sha256 differs from the standard lists' for {', '.join(checksums)}"
            summary.append(text + " (a custom or partial set? prepare it with --custom)")
        raise DataError(f"verification of {self.root} failed:\n  - " + "\n  - ".join(real + summary))


def _listed(items: Sequence[str]) -> str:
    items = list(items)
    more = f" ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def _check_pairs(image_paths: list[str], mask_paths: list[str], num_classes: int) -> list[str]:
    """Problems of a batch of (image, mask) pairs: missing, unreadable, size mismatch, bad values."""
    problems = []
    for image_path, mask_path in zip(image_paths, mask_paths):
        try:
            with Image.open(image_path) as im:
                size = im.size
        except FileNotFoundError:
            problems.append(f"image missing: {image_path}")
            continue
        except (OSError, SyntaxError, ValueError) as exc:
            problems.append(f"image unreadable: {image_path} ({exc})")
            continue
        try:
            mask = read_mask(mask_path, num_classes)
        except TagsegError as exc:
            problems.append(f"mask missing: {mask_path}" if not Path(mask_path).is_file() else str(exc))
            continue
        if (mask.shape[1], mask.shape[0]) != size:
            problems.append(f"size mismatch: mask {mask_path} is {mask.shape[1]}x{mask.shape[0]}, "
                            f"image {image_path} is {size[0]}x{size[1]}")
    return problems


def _read_list(path: Path, report: VerifyReport) -> Optional[list[str]]:
    if not path.is_file():
        return None
    text = path.read_text()
    ids = [line.strip() for line in text.splitlines() if line.strip()]
    if text != list_text(ids) or len(set(ids)) != len(ids):
        report.problems.append(f"{path}: not in canonical form (ids sorted, unique, one per line, '\\n' after each)")
    return ids


def verify_tree(root: str | Path, layout: TreeLayout, class_names: Sequence[str],
                expected: Mapping[str, ListExpectation], disjoint: Sequence[tuple[str, str]] = (),
                subsets: Sequence[tuple[str, str]] = (), optional: Sequence[str] = (),
                workers: int = 0, check_files: bool = True) -> VerifyReport:
    """Check a prepared tree against ``expected`` (list name -> count / sha256).

    - every list in ``expected`` exists (those in ``optional`` may be absent: a note, not a
      problem), is in canonical form, has the expected count and checksum;
    - the pairs in ``disjoint`` share no id, each (a, b) in ``subsets`` has a ⊆ b;
    - every id has an image and a mask of the same size, mask values in 0..K-1 ∪ {255}
      (``check_files``; over ``workers`` processes, 0 = all cores);
    - the labels file exists, has ``class_names`` and an entry for every id.
    Returns the report; call ``raise_if_failed`` to turn problems into a DataError.
    """
    root = Path(root)
    report = VerifyReport(root)
    if not root.is_dir():
        report.problems.append(f"prepared tree not found: {root}")
        return report
    lists: dict[str, list[str]] = {}
    for name, exp in expected.items():
        path = root / layout.lists_dir / f"{name}.txt"
        ids = _read_list(path, report)
        if ids is None:
            if name in optional:
                report.notes.append(f"{path} absent: list {name} not checked")
            else:
                report.problems.append(f"list missing: {path}")
            continue
        lists[name] = ids
        report.counts[name] = len(set(ids))
        report.sha256[name] = list_sha256(ids)
        if exp.count is not None and len(set(ids)) != exp.count:
            report.list_mismatches.append(f"{path.name}: {len(set(ids)):,} ids, expected {exp.count:,}")
        if exp.sha256 is not None and report.sha256[name] != exp.sha256:
            report.list_mismatches.append(f"{path}: sha256 {report.sha256[name]} differs from the standard list's "
                                          f"{exp.sha256}")
    report.problems += report.list_mismatches
    for a, b in disjoint:
        if a in lists and b in lists:
            both = sorted(set(lists[a]) & set(lists[b]))
            if both:
                report.problems.append(f"lists {a} and {b} overlap in {len(both)} ids: {_listed(both)}")
    for a, b in subsets:
        if a in lists and b in lists:
            extra = sorted(set(lists[a]) - set(lists[b]))
            if extra:
                report.problems.append(f"{len(extra)} ids of {a} are not in {b}: {_listed(extra)}")
    all_ids = sorted(set().union(*lists.values())) if lists else []
    labels_path = root / layout.labels_file
    if labels_path.is_file():
        try:
            _, table = read_image_labels(labels_path, class_names)
            missing = [i for i in all_ids if i not in table]
            if missing:
                report.problems.append(f"{labels_path}: no labels for {len(missing)} ids: {_listed(missing)}")
        except TagsegError as exc:
            report.problems.append(str(exc))
    else:
        report.problems.append(f"labels file missing: {labels_path}")
    if check_files and all_ids:
        images = [str(root / layout.images_dir / f"{i}{layout.image_ext}") for i in all_ids]
        masks = [str(root / layout.masks_dir / f"{i}.png") for i in all_ids]
        chunk = 64
        jobs = [(images[s:s + chunk], masks[s:s + chunk], len(class_names)) for s in range(0, len(all_ids), chunk)]
        file_problems: list[str] = []
        with tqdm(total=len(all_ids), desc="verify", unit="img", leave=False, mininterval=1.0) as bar:
            for found in run_jobs(_check_pairs, jobs, resolve_workers(workers)):
                file_problems += found
                bar.update(chunk)
        report.files_checked = len(all_ids)
        file_problems.sort()
        if file_problems:
            shown = file_problems[:20]
            more = f" (and {len(file_problems) - 20} more file problems)" if len(file_problems) > 20 else ""
            report.problems += shown
            if more:
                report.problems.append(more.strip(" ()"))
    return report
