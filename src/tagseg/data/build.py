"""Build a dataset index from the ``data`` config section."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from tagseg.config import DATASETS, DataConfig, choose
from tagseg.data.folder import read_folder
from tagseg.data.records import DatasetIndex
from tagseg.data.voc import read_voc
from tagseg.errors import ConfigError
from tagseg.utils.io import set_max_image_pixels
from tagseg.utils.safe_paths import check_path_text, id_problem


def _read_voc(cfg: DataConfig, split: str) -> DatasetIndex:
    return read_voc(cfg.root, split, cfg.label_source, cfg.mask_dir, cfg.max_images)


def _read_coco(cfg: DataConfig, split: str) -> DatasetIndex:
    from tagseg.data.coco import read_coco

    return read_coco(cfg.root, split, cfg.max_images)


def _read_folder(cfg: DataConfig, split: str) -> DatasetIndex:
    return read_folder(cfg.root, split, cfg.max_images)


def _read_synthetic(cfg: DataConfig, split: str) -> DatasetIndex:
    from tagseg.data.synthetic import generate_dataset

    generate_dataset(Path(cfg.root), num_train=cfg.synthetic_train, num_val=cfg.synthetic_val,
                     size=cfg.synthetic_size, seed=cfg.synthetic_seed)
    return read_folder(cfg.root, split, cfg.max_images)


#: ``data.dataset`` -> its reader ``(data config, split) -> DatasetIndex``; every name of
#: ``config.DATASETS`` has one (docs/ARCHITECTURE.md, "How to add a dataset").
READERS: dict[str, Callable[[DataConfig, str], DatasetIndex]] = {
    "voc": _read_voc,
    "coco": _read_coco,
    "folder": _read_folder,
    "synthetic": _read_synthetic,
}


def build_index(cfg: DataConfig, split: str) -> DatasetIndex:
    """The records of ``split``. For 'synthetic', the demo data is generated into ``cfg.root`` first
    (once; later calls reuse it). Sets this process's image-size limit from ``cfg.max_image_pixels``."""
    set_max_image_pixels(cfg.max_image_pixels)
    if not cfg.root:
        raise ConfigError("data.root is empty: set it to the dataset folder (e.g. data.root=/path/to/VOC2012)")
    check_path_text(cfg.root, "data.root")
    problem = id_problem(split)
    if problem is not None:  # a split names a list file and the stages' output folders (<run>/pseudo/<split>)
        raise ConfigError(f"split {split!r} {problem}; split names are plain names (train, val, train_aug, ...)")
    reader = READERS.get(cfg.dataset)
    if reader is None:
        choose("data.dataset", cfg.dataset, DATASETS)  # a dataset listed in DATASETS but without a reader
        raise ConfigError(f"data.dataset={cfg.dataset!r} is allowed but has no reader")
    return reader(cfg, split)
