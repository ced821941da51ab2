"""Torch datasets: augmented training views (A and, for L_ET, B) and plain inference images.

Augmentation randomness is drawn from a generator seeded by (seed, epoch, index), so a
sample's views do not depend on worker count, order or resumption.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from tagseg.config import ET_CROP_CORNERS, AugmentConfig
from tagseg.data.records import DatasetIndex
from tagseg.data.geometry import apply_flips, view_b_image
from tagseg.utils.io import read_image


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) -> (C, size, size), bilinear with antialiasing."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


IMAGENET_MEAN = (0.485, 0.456, 0.406)


def resize_long_crop(x: torch.Tensor, lengths: tuple[int, int], size: int, rng: np.random.Generator) -> torch.Tensor:
    """The official CAM recipe's geometry on (3, H, W) in [0, 1]: the long side resized to a random
    length in ``lengths`` (inclusive; bicubic, antialiased), then a random ``size`` x ``size`` crop;
    where the image is smaller it sits at a random place on the ImageNet mean colour."""
    h, w = x.shape[-2:]
    target = int(rng.integers(lengths[0], lengths[1] + 1))
    if w < h:
        new = (target, max(1, int(round(w * target / h))))
    else:
        new = (max(1, int(round(h * target / w))), target)
    x = F.interpolate(x[None], size=new, mode="bicubic", align_corners=False, antialias=True)[0].clamp(0.0, 1.0)
    h, w = new
    out = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(3, 1, 1).expand(3, size, size).clone()
    img_top, cont_top = (int(rng.integers(h - size + 1)), 0) if h > size else (0, int(rng.integers(size - h + 1)))
    img_left, cont_left = (int(rng.integers(w - size + 1)), 0) if w > size else (0, int(rng.integers(size - w + 1)))
    ch, cw = min(size, h), min(size, w)
    out[:, cont_top:cont_top + ch, cont_left:cont_left + cw] = x[:, img_top:img_top + ch, img_left:img_left + cw]
    return out


def colour_jitter(x: torch.Tensor, aug: AugmentConfig, rng: np.random.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation, hue jitter and random grayscale on (3, H, W) in [0, 1]."""
    # imported here: torchvision's import costs about 2 s (torchvision.ops pulls in torch._dynamo),
    # which every inference command (pseudo, refine, eval, predict) would pay for a training-only transform
    import torchvision.transforms.v2.functional as TF

    if tuple(aug.brightness) != (1.0, 1.0):
        x = TF.adjust_brightness(x, float(rng.uniform(*aug.brightness)))
    x = TF.adjust_contrast(x, float(rng.uniform(*aug.contrast)))
    x = TF.adjust_saturation(x, float(rng.uniform(*aug.saturation)))
    if aug.hue > 0:
        x = TF.adjust_hue(x, float(rng.uniform(-aug.hue, aug.hue)))
    if rng.random() < aug.grayscale_prob:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    return x.clamp(0.0, 1.0).contiguous()


CROP_CORNERS = ET_CROP_CORNERS


def crop_corner(rng: np.random.Generator, image_size: int, crop_size: int, patch: int, corners: str) -> int:
    """One crop corner (pixels, a multiple of ``patch``) along one axis.

    'official': a multiple of ``patch`` drawn uniformly from 0..image_size inclusive, then clipped
    to image_size - crop_size (so the last valid corner also takes every larger draw), as the
    official ViT-PCM ``bbox_for_crop``; 'uniform': uniform over the valid corners.
    """
    if corners == "official":
        return min(patch * int(rng.integers(image_size // patch + 1)), image_size - crop_size)
    if corners == "uniform":
        return patch * int(rng.integers((image_size - crop_size) // patch + 1))
    raise ValueError(f"crop corners {corners!r}: choose one of {CROP_CORNERS}")


def random_flips(aug: AugmentConfig, rng: np.random.Generator) -> list[float]:
    return [float(rng.random() < aug.hflip_prob), float(rng.random() < aug.vflip_prob),
            float(rng.random() < aug.transpose_prob)]


class TrainingViews(Dataset):
    """Items: image (3,S,S) view A, labels (K,), geom_a (7,); with ET also view_b (3,S/2,S/2), geom_b (7,)."""

    def __init__(self, index: DatasetIndex, image_size: int, augment: AugmentConfig, *, patch_size: int,
                 seed: int = 0, equivariance: bool = False, crop_prob: float = 0.3, crop_size: int = 128,
                 crop_corners: str = "official", align_corners: bool = True) -> None:
        """patch_size: px, the model family's (``Family.patch_size``); crop_corners / align_corners:
        ``method.et_crop_corners`` / ``method.et_align_corners``."""
        if crop_corners not in CROP_CORNERS:
            raise ValueError(f"crop corners {crop_corners!r}: choose one of {CROP_CORNERS}")
        self.index = index.require_nonempty()
        self.size = image_size
        self.aug = augment
        self.seed = seed
        self.equivariance = equivariance
        self.crop_prob = crop_prob
        self.crop_size = crop_size
        self.patch = patch_size
        self.crop_corners = crop_corners
        self.align_corners = align_corners
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        rec = self.index.records[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        if self.aug.geometry == "resize_long_crop":  # jitter and flip before the crop's padding, as the official code
            image = colour_jitter(image_to_tensor(read_image(rec.image_path)), self.aug, rng)
            flips = random_flips(self.aug, rng)
            image = apply_flips(image, *(v > 0.5 for v in flips))
            return {"image": resize_long_crop(image, self.aug.resize_long, self.size, rng),
                    "labels": torch.from_numpy(rec.labels), "geom_a": torch.tensor(flips + [0.0] * 4), "index": i}
        base = resize_square(image_to_tensor(read_image(rec.image_path)), self.size)
        flips_a = random_flips(self.aug, rng)
        geom_a = torch.tensor(flips_a + [0.0, 0.0, 0.0, 0.0])
        item = {
            "image": apply_flips(colour_jitter(base.clone(), self.aug, rng), *(v > 0.5 for v in flips_a)),
            "labels": torch.from_numpy(rec.labels),
            "geom_a": geom_a,
            "index": i,
        }
        if self.equivariance:
            flips_b = random_flips(self.aug, rng)
            crop = [0.0, 0.0, 0.0, 0.0]
            if rng.random() < self.crop_prob:
                y0, x0 = (crop_corner(rng, self.size, self.crop_size, self.patch, self.crop_corners)
                          for _ in range(2))
                crop = [1.0, float(y0), float(x0), float(self.crop_size)]
            geom_b = torch.tensor(flips_b + crop)
            item["view_b"] = view_b_image(colour_jitter(base.clone(), self.aug, rng), geom_b, self.size // 2,
                                          self.align_corners)
            item["geom_b"] = geom_b
        return item
