"""Pseudo-masks through the per-image runner are bit-identical to a plain loop over the images (the
loop the runner replaced, proven equal to it before it was deleted), on the demo's synthetic data
and on real VOC images, serial and with worker processes; the manifest's counts match the files."""

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
from tagseg.pseudo.generate import generate_pseudo_masks, pseudo_layout, process_record
from tagseg.runner import RunOptions
from tagseg.classify.trainer import Trainer

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


def plain_loop(model, index: DatasetIndex, out: Path, cfg, family: str) -> None:
    """The reference: every image in order, one after the other, no runner."""
    layout = pseudo_layout(out, cfg)
    for rec in index.records:
        process_record(model, rec, layout.paths(rec.id), out, cfg, index.palette, "cpu", family)


def _compare(model_path: Path, index: DatasetIndex, cfg, tmp_path: Path, workers: int) -> dict[str, str]:
    model, _, info = load_trained_model(model_path)
    family = info["family"]
    options = RunOptions(progress=False, workers=workers, threads=1)
    plain_loop(model, index, tmp_path / "old", cfg, family)
    stats = generate_pseudo_masks(model, index, tmp_path / "new", cfg, options, family=family, model_path=model_path)
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


def test_pseudo_applies_its_own_keys_and_refuses_the_ones_the_model_fixes(demo_run, tmp_path, capsys):
    from tagseg.cli import main

    cfg, run = demo_run
    out = tmp_path / "p"
    assert main(["pseudo", "--run", str(run), "--out", str(out), "--threads", "1", "--workers", "1",
                 "data.max_images=2", "pseudo.flip=true", "pseudo.crf=none", "pseudo.save_probs=false"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["flip"] is True and manifest["split"] == cfg.data.pseudo_split
    assert manifest["counts"]["on_disk"] == {"masks": 2, "complete": 2} and manifest["run"] == str(run)
    capsys.readouterr()
    for bad, key in [("model.bn=frozen", "model.bn"), ("addons.ppc.wieght=1", "addons.ppc.wieght"),
                     ("method.topk=3", "method.topk"), ("train.epochs=1", "train.epochs")]:
        assert main(["pseudo", "--run", str(run), "--out", str(tmp_path / "q"), bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("tagseg pseudo: error: ") and f"{key} is not applied by `tagseg pseudo`" in err
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "q").exists()


def test_training_leaves_a_manifest_in_its_run_folder(demo_run):
    cfg, run = demo_run
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stage"] == "classify" and manifest["split"] == cfg.data.train_split
    assert manifest["settings"]["method"]["pooling"] == cfg.method.pooling
    assert manifest["counts"] == {"epochs": cfg.train.epochs, "model": "model.safetensors",
                                  "selected_epoch": cfg.train.epochs}
    assert manifest["input"] == str(cfg.data.root) and len(manifest["config_hash"]) == 64


def test_a_finished_pseudo_folder_loads_no_model_and_another_models_is_refused(demo_run, tmp_path, capsys,
                                                                                monkeypatch):
    import tagseg.inference.loading as loading
    from tagseg.cli import main
    from tagseg.runner import file_sha256

    cfg, run = demo_run
    out = tmp_path / "p"
    args = ["pseudo", "--run", str(run), "--out", str(out), "--threads", "1", "--workers", "1", "pseudo.crf=none"]
    assert main(args) == 0
    assert json.loads((out / "manifest.json").read_text())["models"] == {
        "classifier": file_sha256(run / "model.safetensors")}
    before = digests(out)

    def no_load(*a, **k):
        raise AssertionError("the model was loaded for a finished folder")

    with monkeypatch.context() as m:
        m.setattr(loading, "load_trained_model", no_load)
        capsys.readouterr()
        assert main(args) == 0
        assert "all 8 already done with these settings and this model" in capsys.readouterr().out
        with pytest.raises(AssertionError, match="was loaded"):  # --overwrite redoes them, loading the model
            main([*args, "--overwrite"])
    assert digests(out) == before
    # the same settings from a network trained again: refused, nothing touched
    other = tmp_path / "retrained"
    Trainer(load_config(str(run / "config.yaml"), ["seed=9"]), other, show_progress=False).fit()
    capsys.readouterr()
    assert main(["pseudo", "--run", str(other), *args[3:]]) == 2
    assert "models.classifier: " in capsys.readouterr().err and digests(out) == before
