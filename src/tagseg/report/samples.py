"""The sample grid's data: which images to show (worst first) and their thumbnails.

A row holds the photo, its ground truth and one mask per mask folder of the split, each as a
data URI, with the per-image mIoU of every mask (computed from the files by the one scorer,
:func:`tagseg.metrics.scorer.image_miou`) and the classes present.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tagseg.data.records import DatasetIndex
from tagseg.errors import TagsegError
from tagseg.metrics.scorer import image_miou
from tagseg.report.collect import MaskSource, RunContents
from tagseg.report.figures import image_thumbnail, jpeg_data_uri, mask_data_uri, mask_thumbnail
from tagseg.utils.io import read_image, read_mask
from tagseg.utils.safe_paths import check_id, path_inside


@dataclass
class SampleCell:
    """One thumbnail: data URI (None when unavailable, then ``note`` says why), the classes it
    contains (indices, 255 excluded) and, for predictions, the per-image mIoU (fraction)."""

    uri: Optional[str] = None
    width: int = 0
    height: int = 0
    note: str = ""
    classes: list[int] = field(default_factory=list)
    miou: Optional[float] = None


@dataclass
class SampleRow:
    id: str
    image: SampleCell
    truth: SampleCell
    outputs: list[SampleCell]

    @property
    def classes(self) -> list[int]:
        """Classes present in the ground truth or any output, sorted."""
        found = set(self.truth.classes)
        for cell in self.outputs:
            found.update(cell.classes)
        return sorted(found)


def ordering_source(sources: Sequence[MaskSource]) -> Optional[MaskSource]:
    """The first mask folder whose eval.json lists per-image scores (pseudo-masks before refined ones)."""
    for src in sources:
        if src.evaluation is not None and src.evaluation.per_image:
            return src
    return None


def order_ids(run: RunContents, index: Optional[DatasetIndex]) -> tuple[list[str], str]:
    """Image ids to show, worst first when an eval.json allows it, and a sentence saying how."""
    known = {r.id for r in index.records} if index is not None else None
    src = ordering_source(run.sources)
    if src is not None:
        scores = src.evaluation.per_image  # already sorted worst first by the evaluator
        ids = sorted(scores, key=lambda i: (scores[i] is None, scores[i] if scores[i] is not None else 0.0))
        if known is not None:
            ids = [i for i in ids if i in known]
        return ids, f"worst first by the per-image mIoU of the {src.label}s ({src.evaluation.rel_path})"
    if index is not None:
        ids = [r.id for r in index.records]
    else:
        ids = sorted({p.stem for s in run.sources for p in s.mask_dir.glob("*.png")})
    return ids, "in dataset order (no eval.json with per-image scores: run tagseg eval to order worst first)"


def _mask_file(mask_dir: Path, image_id: str) -> Optional[Path]:
    """``mask_dir/<id>.png``, or None when the id is not a plain name inside that folder."""
    try:
        return path_inside(mask_dir, f"{check_id(image_id, mask_dir)}.png")
    except TagsegError:
        return None


def _mask_cell(path, num_classes: int, max_side: int, palette: Sequence[int],
               truth: Optional[np.ndarray]) -> tuple[SampleCell, Optional[np.ndarray]]:
    if path is None or not path.is_file():
        return SampleCell(note="missing"), None
    try:
        mask = read_mask(path, num_classes)
    except TagsegError as exc:
        return SampleCell(note=str(exc)), None
    thumb = mask_thumbnail(mask, max_side)
    cell = SampleCell(uri=mask_data_uri(thumb, palette), width=thumb.shape[1], height=thumb.shape[0],
                      classes=sorted(int(v) for v in np.unique(mask) if v < num_classes))
    if truth is not None:
        if truth.shape == mask.shape:
            cell.miou = image_miou(mask, truth, num_classes)
        else:
            cell.note = f"size {mask.shape[1]}x{mask.shape[0]} differs from the ground truth"
    return cell, mask


def build_sample_rows(run: RunContents, index: Optional[DatasetIndex], ids: Sequence[str], num_classes: int,
                      palette: Sequence[int], max_side: int = 200) -> list[SampleRow]:
    """Thumbnails and scores for ``ids`` (photo and ground truth from ``index`` when given)."""
    records = {r.id: r for r in index.records} if index is not None else {}
    rows = []
    for image_id in ids:
        rec = records.get(image_id)
        if rec is None:
            image = SampleCell(note="dataset not available")
        else:
            try:
                thumb = image_thumbnail(read_image(rec.image_path), max_side)
                image = SampleCell(uri=jpeg_data_uri(thumb), width=thumb.shape[1], height=thumb.shape[0])
            except TagsegError as exc:
                image = SampleCell(note=str(exc))
        if rec is not None and rec.mask_path is not None:
            truth_cell, truth = _mask_cell(rec.mask_path, num_classes, max_side, palette, None)
        else:
            truth_cell, truth = SampleCell(note="no ground truth" if rec else "dataset not available"), None
        outputs = [_mask_cell(_mask_file(src.mask_dir, image_id), num_classes, max_side, palette, truth)[0]
                   for src in run.sources]
        rows.append(SampleRow(image_id, image, truth_cell, outputs))
    return rows
