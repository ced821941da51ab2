"""Pre-flight check of a dataset split: decode every image and mask before training starts, so a
bad file stops the run at once (naming the file) instead of when a batch reaches it, hours in."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from tagseg.errors import DataError

if TYPE_CHECKING:  # the command line reads the default below without loading numpy or PIL
    from tagseg.data.records import DatasetIndex

#: ``train --check-data`` is on by default for training sets up to this many images.
CHECK_DATA_DEFAULT_MAX = 5000


def should_check(requested: Optional[bool], images: int, limit: int = CHECK_DATA_DEFAULT_MAX) -> bool:
    """``--check-data`` / ``--no-check-data`` as given, else on for sets of at most ``limit`` images."""
    return requested if requested is not None else images <= limit


def check_split(index: "DatasetIndex", progress: bool = True) -> int:
    """Decode every image (and mask, when the split has one) of ``index``; masks must hold only
    the split's class values or 255 and have their image's size. Returns the number of files read.

    Raises DataError naming the first bad file (missing, empty, truncated, corrupt, too large,
    unknown class values, or a mask of another size than its image).
    """
    from tqdm import tqdm

    from tagseg.utils.io import read_image, read_mask

    files = 0
    bar = tqdm(index.records, desc=f"checking {index.name or 'data'}", unit="img", disable=not progress,
               leave=False)
    for rec in bar:
        image = read_image(rec.image_path)
        files += 1
        if rec.mask_path is not None:
            mask = read_mask(rec.mask_path, index.num_classes)
            files += 1
            if mask.shape != image.shape[:2]:
                raise DataError(f"mask {rec.mask_path} is {mask.shape[1]}×{mask.shape[0]} px but its image "
                                f"{rec.image_path} is {image.shape[1]}×{image.shape[0]} px")
    return files
