"""Pseudo-masks through the per-image runner are bit-identical to the loop they replaced, on the
demo's synthetic data and on real VOC images, serial and with worker processes; the runner writes
a manifest whose counts match the files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fixtures import make_voc
from tagseg.config import load_config
from tagseg.data.build import build_index
from tagseg.data.records import DatasetIndex
from tagseg.experiment import load_experiment
from tagseg.inference.loading import load_trained_model
from tagseg.pseudo.generate import generate_pseudo_masks
from tagseg.pseudo.legacy_loop import generate_pseudo_masks as legacy_generate
from tagseg.training.trainer import Trainer

TINY_VOC = [
    "data.dataset=voc", "data.train_split=train", "data.pseudo_split=train", "data.image_size=64",
    "data.num_workers=0", "model.encoder=test_resnet", "model.pretrained=false", "train.batch_size=2",
    "train.epochs=1", "train.warmup_epochs=0", "train.unfreeze_blocks=1", "pseudo.image_size=64",
    "seed=5", "train.cpu_threads=1", "pseudo.crf=torch", "pseudo.save_probs=true", "pseudo.flip=true",
]


def digests(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file below ``folder`` except the manifest and lock files."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith((".lock", "manifest"))}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    cfg = load_config("demo", [f"data.root={root / 'data'}", "data.synthetic_train=8", "data.synthetic_val=2",
                               "data.synthetic_size=64", "data.image_size=64", "pseudo.image_size=64",
                               "train.epochs=1", "train.batch_size=4", "data.num_workers=0", "train.cpu_threads=1",
                               "pseudo.crf=torch", "pseudo.save_probs=true"])
    Trainer(cfg, root / "run", show_progress=False).fit()
    return cfg, root / "run"


@pytest.fixture(scope="module")
def voc_cam_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("vocdata") / "voc"
    make_voc(data, n=4)
    cfg = load_experiment("cam_voc", [f"data.root={data}", *TINY_VOC, "pseudo.scales=[1.0,0.5]"])
    run = tmp_path_factory.mktemp("voccam") / "run"
    Trainer(cfg, run, show_progress=False).fit()
    return cfg, run


def _compare(model_path: Path, index: DatasetIndex, cfg, tmp_path: Path, workers: int) -> dict[str, str]:
    model, _, info = load_trained_model(model_path)
    family = info["family"]
    kw = dict(family=family, progress=False, workers=workers, model_path=model_path, threads=1)
    legacy_generate(model, index, tmp_path / "old", cfg, **kw)
    stats = generate_pseudo_masks(model, index, tmp_path / "new", cfg, **kw)
    old, new = digests(tmp_path / "old"), digests(tmp_path / "new")
    assert len(old) == len(index) * 3 and stats.written == len(index)
    assert new == old
    manifest = json.loads((tmp_path / "new" / "manifest.json").read_text())
    assert manifest["stage"] == "pseudo" and manifest["counts"]["on_disk"] == {
        "masks": len(index), "crf": len(index), "probs": len(index), "complete": len(index)}
    return new


@pytest.mark.parametrize("workers", [1, 2])
def test_demo_data_bit_identical_to_the_old_loop(demo_run, tmp_path, workers):
    cfg, run = demo_run
    index = build_index(cfg.data, cfg.data.pseudo_split)
    _compare(run / "model.safetensors", index, cfg.pseudo, tmp_path, workers)


@pytest.mark.parametrize("workers", [1, 2])
def test_voc_subset_sample_bit_identical_to_the_old_loop(voc_cam_run, voc_root, tmp_path, workers):
    cfg, run = voc_cam_run
    cfg.data.root = str(voc_root)
    index = build_index(cfg.data, "val")
    index.records = index.records[:: max(1, len(index.records) // 6)][:6]
    _compare(run / "model.safetensors", index, cfg.pseudo, tmp_path, workers)
