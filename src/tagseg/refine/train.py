"""Training of IRN's boundary branch and of AffinityNet's head as an engine task.

1. Labels (:func:`make_seed_labels`, per-image runner): IRN's or PSA's confident labels from the
   run's seeds, ``<run>/refine/<method>/labels/<id>.png`` (255 = unsure).
2. The task (:func:`refine_task`): the run's encoder, frozen, under the head; random flip + crop
   of ``crop_size``; labels taken to the head's grid (nearest); pair labels within the radius;
   the pair losses (:mod:`tagseg.refine.losses`); SGD with poly decay, IRN / PSA settings.
   The engine's one loop trains it into ``<run>/refine/<method>/`` (checkpoints, resume,
   ``model.safetensors``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tagseg.config import ExperimentConfig, config_to_yaml, resolve_psa, to_dict
from tagseg.data.records import DatasetIndex, ImageRecord
from tagseg.data.views import image_to_tensor
from tagseg.engine.distributed import DistInfo
from tagseg.engine.resume import config_differences, describe_differences
from tagseg.engine.schedule import PolySchedule
from tagseg.engine.task import Task
from tagseg.errors import ConfigError, DataError
from tagseg.models.encoder import PATCH_STRIDE
from tagseg.refine.heads import (AffinityHead, BoundaryBranch, encoder_pyramid, feature_affinity, path_affinity,
                                 pyramid_channels, pyramid_levels)
from tagseg.refine.labels import IGNORE, irn_seed_labels, pair_labels, psa_seed_labels
from tagseg.refine.losses import pair_losses
from tagseg.refine.pairs import build_path_index, crop_pairs
from tagseg.refine.seeds import seeds_of
from tagseg.runner import ManifestInfo, OutputLayout, RunStats, run_per_image
from tagseg.utils.io import read_image, read_mask, save_mask_png

PAD = 32  # inputs are padded to a multiple of this before the encoder


def _pad(x: torch.Tensor, multiple: int = PAD) -> torch.Tensor:
    h, w = x.shape[-2:]
    return F.pad(x, [0, (-w) % multiple, 0, (-h) % multiple])


class _FrozenEncoderNet(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.levels = pyramid_levels(encoder)
        self.channels = pyramid_channels(encoder, self.levels)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen: BatchNorm statistics and dropout stay as trained
        return self

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("encoder.")]


class BoundaryNet(_FrozenEncoderNet):
    """The run's encoder + IRN's boundary branch; boundary logits on the stride-``stride`` grid."""

    def __init__(self, encoder: nn.Module, stride: int = 4) -> None:
        super().__init__(encoder)
        self.stride = stride
        self.branch = BoundaryBranch(self.channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> logits (B, 1, ceil(H/s), ceil(W/s))."""
        h, w = images.shape[-2:]
        grid = (math.ceil(h / self.stride), math.ceil(w / self.stride))
        padded = _pad(images)
        full = (padded.shape[-2] // self.stride, padded.shape[-1] // self.stride)
        return self.branch(encoder_pyramid(self.encoder, padded, self.levels), full)[..., :grid[0], :grid[1]]

    @torch.no_grad()
    def boundary_probs(self, image: torch.Tensor, flip: bool = True) -> torch.Tensor:
        """(h, w) boundary probabilities of one image (3, H, W); with ``flip`` the logits are
        averaged with the mirrored image's (IRN ``EdgeDisplacement``)."""
        if not flip:
            return torch.sigmoid(self(image[None]))[0, 0]
        logits = self(torch.stack([image, image.flip(-1)]))[:, 0]
        return torch.sigmoid(logits[0] / 2 + logits[1].flip(-1) / 2)


class AffinityNet(_FrozenEncoderNet):
    """The run's encoder + PSA's affinity head; features on the grid of the third-last level."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__(encoder)
        if len(self.levels) < 3:
            raise ConfigError(f"encoder {encoder.name} has {len(self.levels)} feature levels; AffinityNet needs 3")
        self.head = AffinityHead(self.channels)

    def grid_stride(self) -> int:
        if getattr(self.encoder, "is_vit", False):
            return PATCH_STRIDE
        return int(self.encoder.backbone.feature_info[self.levels[-3]]["reduction"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        s = self.grid_stride()
        feats = self.head(encoder_pyramid(self.encoder, _pad(images), self.levels))
        return feats[..., :math.ceil(h / s), :math.ceil(w / s)]

    @torch.no_grad()
    def affinity_features(self, image: torch.Tensor) -> torch.Tensor:
        return self(image[None])


# config keys a head's training does not depend on (the walk's settings, the machine): they may
# differ when an interrupted head training resumes
HEAD_INDEPENDENT = ("train", "pseudo", "data.num_workers", "device", "refine.method", "refine.par",
                    "refine.irn.radius", "refine.irn.beta", "refine.irn.exp_times", "refine.irn.bg_thres_walk",
                    "refine.irn.flip", "refine.psa.walk_alpha", "refine.psa.beta", "refine.psa.logt")
# ... and, once the head is trained, the images a later call refines (which split, how many, where)
REUSE_MAY_CHANGE = (*HEAD_INDEPENDENT, "data.max_images", "data.pseudo_split", "data.val_split", "data.root")


def check_head_settings(meta: dict, cfg: ExperimentConfig, path: Path) -> None:
    """Refuse a trained head whose training settings differ from ``cfg``'s (naming the keys).

    A head written before its file recorded the config (no ``config`` in ``meta``) is not checked.
    """
    try:
        saved = json.loads(meta.get("config", "null"))
    except ValueError as exc:
        raise ConfigError(f"{path}: the head's recorded config is not JSON ({exc})") from exc
    if not isinstance(saved, dict):
        return
    differ = config_differences(saved, to_dict(cfg), may_change=REUSE_MAY_CHANGE)
    if differ:
        raise ConfigError(
            f"the head in {path} was trained with other settings ({describe_differences(differ)}); "
            f"restore them, or delete {Path(path).parent} to train the head again with these")


def check_head_classifier(meta: dict, classifier_sha256: Optional[str], path: Path) -> None:
    """Refuse a trained head whose labels and encoder came from another classifier file than the
    run's (``classifier_sha256``): a network trained again into the run folder makes it stale. A head
    written before its file recorded the classifier, or a caller that states none, is not checked."""
    saved = meta.get("classifier_sha256")
    if saved and classifier_sha256 and saved != classifier_sha256:
        raise ConfigError(f"the head in {path} was trained on another classifier (model.safetensors sha256 "
                          f"{saved[:12]}… where the run's is now {classifier_sha256[:12]}…); delete "
                          f"{Path(path).parent} to train the head again on this one")


def load_refine_net(model: nn.Module, cfg: ExperimentConfig, path: Path, method: str, device,
                    classifier_sha256: Optional[str] = None) -> nn.Module:
    """The trained head of ``method`` (with a copy of the run's encoder ``model.encoder``) from ``path``.

    Raises ConfigError when the head was trained with other head settings than ``cfg``'s, or on
    another classifier file than the one whose sha256 is ``classifier_sha256`` (when given)."""
    import copy

    from tagseg.engine.checkpoint import read_model_file

    tensors, meta = read_model_file(Path(path))
    check_head_settings(meta, cfg, Path(path))
    check_head_classifier(meta, classifier_sha256, Path(path))
    net = build_refine_net(method, copy.deepcopy(model.encoder), cfg)
    net.load_state_dict(tensors, strict=True)
    return net.to(device).eval()


def build_refine_net(method: str, encoder: nn.Module, cfg: ExperimentConfig) -> nn.Module:
    if method == "irn":
        return BoundaryNet(encoder, cfg.refine.irn.stride)
    if method == "psa":
        return AffinityNet(encoder)
    raise ConfigError(f"refine method {method!r} has no network to train (irn or psa)")


# ------------------------------------------------------------------------------ labels


def labels_layout(out_dir: Path) -> OutputLayout:
    return OutputLayout(out_dir, {"labels": ("{id}.png",)})


def make_seed_labels(model: nn.Module, index: DatasetIndex, out_dir: Path, cfg: ExperimentConfig, method: str,
                     family: str, device="cpu", shard=(0, 1), progress: bool = True,
                     models: Optional[Mapping[str, str]] = None) -> RunStats:
    """IRN's (two thresholds + label CRF) or PSA's (low/high α + CRF) confident labels of every
    image of ``index``, as PNGs in ``out_dir`` (255 = unsure); ``models``: the model files' sha256
    for the folder's manifest (``{"classifier": ...}``), so labels of another classifier are
    never resumed into."""
    r = cfg.refine
    s = resolve_psa(r.psa)

    def step(rec: ImageRecord, paths: dict[str, Path]) -> None:
        image = read_image(rec.image_path)
        seeds = seeds_of(model, image, rec.labels, cfg.pseudo, family, device)
        if method == "irn":
            label = irn_seed_labels(image, seeds.scores, seeds.keys, r.irn.fg_thres, r.irn.bg_thres,
                                    backend=r.crf, gt_prob=r.irn.label_gt_prob)
        else:
            label = psa_seed_labels(image, seeds.scores, seeds.keys, s.low_alpha, s.high_alpha, backend=r.crf,
                                    seed_crf=s.seed_crf)
        save_mask_png(paths["labels"], label, index.palette, root=out_dir)

    settings = r.irn if method == "irn" else s
    return run_per_image(index.require_nonempty().records, step, labels_layout(out_dir), shard=shard,
                         progress=progress, desc=f"{method} labels",
                         manifest=ManifestInfo(stage=f"refine-{method}-labels", settings=settings, config=cfg,
                                               models=dict(models or {})))


# ----------------------------------------------------------------------------- dataset


class PairLabelSet(Dataset):
    """Crops of the training images with pair labels on the head's grid.

    Items: image (3, crop, crop) in [0, 1] (zero-padded), bg_pos / fg_pos / neg (P, S) float32
    in the layout of ``pairs`` (``"irn"``: :class:`PathIndex` of ``radius``; ``"psa"``:
    :func:`crop_pairs`)."""

    def __init__(self, index: DatasetIndex, label_dir: Path, crop: int, stride: int, radius: int, layout: str,
                 seed: int = 0) -> None:
        self.records = index.require_nonempty().records
        self.label_dir, self.crop, self.stride, self.seed = Path(label_dir), crop, stride, seed
        self.num_classes = index.num_classes
        if crop % stride:
            raise ConfigError(f"crop size {crop} is not a multiple of the grid stride {stride}")
        self.grid = crop // stride
        if self.grid < 2 * radius - 1:
            raise ConfigError(f"refine.{layout}.crop_size={crop} gives a {self.grid}x{self.grid} grid at stride "
                              f"{stride}, too small for pairs within radius {radius}: use at least "
                              f"{(2 * radius - 1) * stride}")
        if layout == "irn":
            pi = build_path_index(radius, self.grid, self.grid)
            self.src, self.dst = pi.src, pi.dst
        else:
            self.src, self.dst = crop_pairs(self.grid, self.grid, radius)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        rec = self.records[i]
        rng = np.random.default_rng((self.seed, self.epoch, i))
        image = read_image(rec.image_path)
        path = self.label_dir / f"{rec.id}.png"
        if not path.is_file():
            raise DataError(f"no refinement label for image {rec.id!r} in {self.label_dir}; run the label step first")
        label = read_mask(path, self.num_classes)
        if label.shape != image.shape[:2]:
            raise DataError(f"label {path} is {label.shape}, its image {image.shape[:2]}")
        if rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        h, w = label.shape
        c = self.crop
        img = np.zeros((c, c, 3), np.uint8)
        lab = np.full((c, c), IGNORE, np.uint8)
        y0, x0 = int(rng.integers(0, max(h - c, 0) + 1)), int(rng.integers(0, max(w - c, 0) + 1))
        oy, ox = int(rng.integers(0, max(c - h, 0) + 1)), int(rng.integers(0, max(c - w, 0) + 1))
        ch, cw = min(c, h), min(c, w)
        img[oy:oy + ch, ox:ox + cw] = image[y0:y0 + ch, x0:x0 + cw]
        lab[oy:oy + ch, ox:ox + cw] = label[y0:y0 + ch, x0:x0 + cw]
        # the grid's label: nearest sample at each cell's centre
        centres = np.arange(self.grid) * self.stride + self.stride // 2
        small = lab[np.ix_(centres, centres)]
        bg, fg, neg = pair_labels(small, self.src, self.dst)
        return {"image": image_to_tensor(img), "bg_pos": bg, "fg_pos": fg, "neg": neg}


# -------------------------------------------------------------------------------- task


def _loss_fn(method: str, path_indices: Optional[list[torch.Tensor]], src, dst):
    def loss(model: nn.Module, core: nn.Module, batch: dict, epoch: int):
        if method == "irn":
            aff = path_affinity(torch.sigmoid(model(batch["image"])), [p.to(batch["image"].device) for p in path_indices])
        else:
            feats = model(batch["image"])
            aff = feature_affinity(feats, src.to(feats.device), dst.to(feats.device))
        out = pair_losses(aff, batch["bg_pos"], batch["fg_pos"], batch["neg"])
        return out.total, {"bg": out.bg.detach(), "fg": out.fg.detach(), "neg": out.neg.detach()}
    return loss


def refine_task(cfg: ExperimentConfig, method: str, encoder_builder, index: DatasetIndex, label_dir: Path,
                classifier_sha256: Optional[str] = None):
    """The engine task training the ``method`` head on the labels in ``label_dir``.

    encoder_builder: () -> the run's trained encoder (fresh copy; the task freezes it);
    classifier_sha256: the sha256 of the classifier's file, recorded in the head's metadata so that
    a later call refuses the head once the classifier has been trained again."""
    if method == "irn":
        c = cfg.refine.irn
        crop, radius, batch, epochs, lr, wd = c.crop_size, c.train_radius, c.batch_size, c.epochs, c.lr, c.weight_decay
    else:
        c = resolve_psa(cfg.refine.psa)
        # PSA trains its from-scratch head layers at 10x the base lr (train_aff.py param groups 2-3)
        crop, radius, batch, epochs, lr, wd = c.crop_size, c.radius, c.batch_size, c.epochs, 10 * c.lr, c.weight_decay

    def build(info: DistInfo, device: torch.device) -> Task:
        core = build_refine_net(method, encoder_builder(), cfg)
        stride = core.stride if method == "irn" else core.grid_stride()
        dataset = PairLabelSet(index, label_dir, crop, stride, radius, method, cfg.seed)
        path_indices = None
        if method == "irn":
            pi = build_path_index(radius, dataset.grid, dataset.grid)
            path_indices = [torch.from_numpy(p) for p in pi.path_indices]
        src, dst = torch.from_numpy(dataset.src), torch.from_numpy(dataset.dst)
        core = core.to(device)
        optimizer = torch.optim.SGD(core.head_parameters(), lr=lr, weight_decay=wd)
        per_process = max(1, batch // info.world_size)
        total = math.ceil(len(dataset) / (per_process * info.world_size)) * epochs
        meta = {"format": f"tagseg-refine-{method}", "method": method,
                "settings": to_dict(cfg.refine.irn if method == "irn" else c), "config": to_dict(cfg),
                **({"classifier_sha256": classifier_sha256} if classifier_sha256 else {})}
        return Task(model=core, dataset=dataset, loss=_loss_fn(method, path_indices, src, dst), optimizer=optimizer,
                    schedule=PolySchedule(lr, total, 0.9), metadata=lambda: meta, config=to_dict(cfg),
                    config_yaml=config_to_yaml(cfg), epochs=epochs, batch_size=per_process,
                    num_workers=cfg.data.num_workers, seed=cfg.seed,
                    resume_may_change=HEAD_INDEPENDENT,
                    total_name="loss", precision="fp32")
    return build
