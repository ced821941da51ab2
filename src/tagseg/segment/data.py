"""Image + mask training set for the segmentation network, with DeepLab augmentation.

Each sample: random scale of the original image (bilinear; mask nearest), padding on the
bottom/right up to the crop size (image: ``pad_value``, mask: 255 so padding never enters the
loss), a random crop, and a random horizontal flip. Randomness comes from a generator seeded
by (seed, epoch, index), so a sample does not depend on worker count, order or resumption.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from tagseg.config import REFINE_METHODS
from tagseg.data.classes import IGNORE_INDEX
from tagseg.data.records import DatasetIndex
from tagseg.data.views import image_to_tensor
from tagseg.errors import DataError
from tagseg.segment.config import GT_MASKS, SegAugmentConfig
from tagseg.utils.io import read_image, read_mask


REFINED_ORDER = REFINE_METHODS  # best first: the published mask quality of each method
CONFIDENT = "confident"  # PAR's two-threshold labels beside its masks: 255 where the thresholds disagree


def refined_mask_folder(pseudo_root: Path, files: str = "masks") -> Optional[tuple[Path, str]]:
    """The refined masks of the same run and split as a ``tagseg pseudo`` output folder
    ``<run>/pseudo/<split>``: ``<run>/refine/<method>/<split>/<files>``, best method first
    (``files``: ``masks``, or ``confident`` for the labels only PAR writes)."""
    run, split = pseudo_root.parent.parent, pseudo_root.name
    if pseudo_root.parent.name != "pseudo":
        return None
    for method in REFINED_ORDER:
        folder = run / "refine" / method / split / files
        if folder.is_dir():
            return folder, method
    return None


def choose_mask_folder(masks_dir: str, kind: str = "auto") -> tuple[str, str]:
    """Which pseudo-masks to train on: (folder, 'refined-<method>' | 'refined-<method>-confident' |
    'crf' | 'plain' | 'gt').

    ``masks_dir`` is a ``tagseg pseudo`` output folder, its ``masks/`` folder, or ``gt``. With
    ``kind`` ``auto`` the best masks of the same run and split that exist are used: refined by
    ``tagseg refine`` (IRN, then PSA, then PAR), then CRF-refined (``<pseudo>/crf/masks``), then
    the plain ones; ``refine`` / ``crf`` insist on that kind; ``confident`` takes PAR's
    two-threshold labels (``<run>/refine/par/<split>/confident``, 255 = unsure, left out of the
    loss); ``plain`` keeps ``masks_dir``. A refined ``masks`` or ``confident`` folder named
    directly is used as it is.
    """
    if masks_dir == GT_MASKS or not masks_dir:
        return masks_dir, "gt" if masks_dir == GT_MASKS else "plain"
    folder = Path(masks_dir)
    if folder.name == "masks" and folder.parent.name == "crf":
        return masks_dir, "crf"  # already the refined ones
    if folder.name in ("masks", CONFIDENT) and folder.parent.parent.parent.name == "refine":
        suffix = "-confident" if folder.name == CONFIDENT else ""
        return masks_dir, f"refined-{folder.parent.parent.name}{suffix}"
    root = folder.parent if folder.name == "masks" else folder
    refined = root / "crf" / "masks"
    if kind == "plain":
        return masks_dir, "plain"
    if kind == CONFIDENT:
        found = refined_mask_folder(root, CONFIDENT)
        if found is None:
            raise DataError(f"segment.mask_kind=confident, but no confident labels of {root} exist (make them "
                            "with `tagseg refine --run RUN --method par`, which writes confident/ beside masks/)")
        return str(found[0]), f"refined-{found[1]}-confident"
    if kind in ("auto", "refine"):
        found = refined_mask_folder(root)
        if found is not None:
            return str(found[0]), f"refined-{found[1]}"
        if kind == "refine":
            raise DataError(f"segment.mask_kind=refine, but no refined masks of {root} exist (make them with "
                            "`tagseg refine --run RUN --method irn|psa|par`, or set segment.mask_kind=auto)")
    if refined.is_dir():
        return str(refined), "crf"
    if kind == "crf":
        raise DataError(f"segment.mask_kind=crf, but the CRF-refined masks {refined} do not exist "
                        "(make them with `tagseg pseudo --crf torch`, or set segment.mask_kind=plain)")
    return masks_dir, "plain"


def resolve_mask_paths(index: DatasetIndex, masks_dir: str) -> list[Path]:
    """The training mask of every record: ``<masks_dir>/<id>.png`` (or ``<masks_dir>/masks/<id>.png``
    for a ``tagseg pseudo`` output folder), or the ground truth when ``masks_dir == 'gt'``.

    Raises DataError naming the folder and the first missing ids.
    """
    if not masks_dir:
        raise DataError("segment.masks_dir is empty: set it to the folder of pseudo-masks "
                        "(<id>.png, e.g. the masks/ folder written by `tagseg pseudo`) or to 'gt'")
    if masks_dir == GT_MASKS:
        missing = [r.id for r in index.records if r.mask_path is None]
        if missing:
            raise DataError(f"segment.masks_dir=gt, but {len(missing)} images of {index.name} have no "
                            f"ground-truth mask (e.g. {missing[:5]})")
        return [r.mask_path for r in index.records]  # type: ignore[misc]
    folder = Path(masks_dir)
    if not folder.is_dir():
        raise DataError(f"mask folder not found: {folder} (segment.masks_dir)")
    if not any(folder.glob("*.png")) and (folder / "masks").is_dir():
        folder = folder / "masks"
    paths = [folder / f"{r.id}.png" for r in index.records]
    missing = [r.id for r, p in zip(index.records, paths) if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} of {len(paths)} training masks missing in {folder} "
                        f"(e.g. {[m + '.png' for m in missing[:5]]}); make pseudo-masks for split "
                        f"{index.name!r} first")
    return paths


def random_scale_crop_flip(image: torch.Tensor, mask: torch.Tensor, aug: SegAugmentConfig,
                           rng: np.random.Generator, pad_value: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """image float (3, H, W), mask uint8 (H, W) -> (3, C, C), (C, C) with C = aug.crop_size.

    Draws, in this order: the scale s ~ U(scale_range), the crop corner, the flip.
    """
    _, h, w = image.shape
    s = float(rng.uniform(*aug.scale_range))
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    if (nh, nw) != (h, w):
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=s < 1)[0]
        mask = F.interpolate(mask[None, None].float(), size=(nh, nw), mode="nearest-exact")[0, 0].to(torch.uint8)
    c = aug.crop_size
    ph, pw = max(c - nh, 0), max(c - nw, 0)
    if ph or pw:
        padded = torch.empty(3, nh + ph, nw + pw, dtype=image.dtype)
        padded[:] = torch.as_tensor(pad_value, dtype=image.dtype).view(3, 1, 1)
        padded[:, :nh, :nw] = image
        image = padded
        mask = F.pad(mask, (0, pw, 0, ph), value=IGNORE_INDEX)
    top = int(rng.integers(0, image.shape[1] - c + 1))
    left = int(rng.integers(0, image.shape[2] - c + 1))
    image = image[:, top:top + c, left:left + c]
    mask = mask[top:top + c, left:left + c]
    if rng.random() < aug.hflip_prob:
        image, mask = image.flip(-1), mask.flip(-1)
    return image.contiguous(), mask.contiguous()


class SegmentationTrainSet(Dataset):
    """Items: image float (3, C, C) in [0, 1], mask int64 (C, C) with 255 = ignore, index."""

    def __init__(self, index: DatasetIndex, mask_paths: Sequence[Path], augment: SegAugmentConfig,
                 pad_value: Sequence[float] = (0.485, 0.456, 0.406), seed: int = 0) -> None:
        self.index = index.require_nonempty()
        if len(mask_paths) != len(index):
            raise DataError(f"{len(mask_paths)} masks for {len(index)} images of {index.name}")
        self.mask_paths = list(mask_paths)
        self.aug = augment
        self.pad_value = tuple(float(v) for v in pad_value)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    def load_pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Original image uint8 (H, W, 3) and its training mask uint8 (H, W)."""
        rec = self.index.records[i]
        image = read_image(rec.image_path)
        mask = read_mask(self.mask_paths[i], self.index.num_classes)
        if mask.shape != image.shape[:2]:
            raise DataError(f"mask {self.mask_paths[i]} is {mask.shape[1]}×{mask.shape[0]} px but image "
                            f"{rec.image_path} is {image.shape[1]}×{image.shape[0]} px")
        return image, mask

    def __getitem__(self, i: int) -> dict:
        image, mask = self.load_pair(i)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        x, m = random_scale_crop_flip(image_to_tensor(image), torch.from_numpy(mask), self.aug, rng, self.pad_value)
        return {"image": x, "mask": m.long(), "index": i}
