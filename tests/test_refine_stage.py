"""The refine stage end to end on tiny runs: `tagseg refine --method par|irn|psa` on a CAM-family
VOC-layout run, PAR on a patch-family (demo) run; resume, manifest, shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures import make_voc
from tagseg.cli import main
from tagseg.config import load_config
from tagseg.experiment import load_experiment
from tagseg.classify.trainer import Trainer
from tagseg.runner import file_sha256

TINY_VOC = [
    "data.dataset=voc", "data.train_split=train", "data.pseudo_split=train", "data.image_size=64",
    "data.num_workers=0", "model.encoder=test_resnet", "model.pretrained=false", "train.batch_size=2",
    "train.epochs=1", "train.warmup_epochs=0", "train.unfreeze_blocks=1", "pseudo.image_size=64",
    "seed=5", "train.cpu_threads=1",
]
SMALL_HEADS = ["refine.irn.crop_size=32", "refine.irn.batch_size=2", "refine.irn.epochs=1",
               "refine.irn.train_radius=3", "refine.psa.crop_size=64", "refine.psa.batch_size=2",
               "refine.psa.epochs=1", "refine.psa.radius=3"]


@pytest.fixture(scope="module")
def cam_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("vocdata") / "voc"
    make_voc(data, n=4)
    cfg = load_experiment("cam_voc", [f"data.root={data}", *TINY_VOC])
    run = tmp_path_factory.mktemp("camrun") / "run"
    Trainer(cfg, run, show_progress=False).fit()
    return run


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def test_refine_help_lists_the_three_methods(capsys):
    with pytest.raises(SystemExit):
        main(["refine", "--help"])
    out = capsys.readouterr().out
    assert "irn" in out and "psa" in out and "par" in out


def test_par_on_a_cam_run_writes_masks_manifest_and_resumes(cam_run, capsys):
    assert main(["refine", "--run", str(cam_run), "--method", "par", "--threads", "1"]) == 0
    out = cam_run / "refine" / "par" / "train"
    masks, confident = _masks(out / "masks"), _masks(out / "confident")
    assert len(masks) == 4 and masks.keys() == confident.keys()
    for m in masks.values():
        assert m.shape == (48, 64) and m.max() < 21
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "refine" and manifest["counts"]["on_disk"]["complete"] == 4
    assert manifest["models"] == {"classifier": file_sha256(cam_run / "model.safetensors")}
    capsys.readouterr()
    assert main(["refine", "--run", str(cam_run), "--method", "par", "--threads", "1"]) == 0
    assert "all 4 already done with these settings and models" in capsys.readouterr().out


def test_a_finished_refine_folder_is_not_redone_and_loads_no_model(cam_run, capsys, monkeypatch):
    import tagseg.inference.loading as loading

    assert main(["refine", "--run", str(cam_run), "--method", "par", "--threads", "1"]) == 0
    before = {p: p.stat().st_mtime_ns for p in (cam_run / "refine" / "par" / "train").rglob("*")}

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded for a finished folder")

    monkeypatch.setattr(loading, "load_trained_model", no_load)
    capsys.readouterr()
    assert main(["refine", "--run", str(cam_run), "--method", "par", "--threads", "1"]) == 0
    assert "all 4 already done" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (cam_run / "refine" / "par" / "train").rglob("*")} == before
    with pytest.raises(AssertionError, match="was loaded"):  # other settings go on to the model
        main(["refine", "--run", str(cam_run), "--method", "par", "--threads", "1", "--out",
              str(cam_run / "par-other"), "refine.par.num_iter=3"])


def test_refined_masks_of_another_classifier_are_refused(cam_run, tmp_path, capsys):
    assert main(["refine", "--run", str(cam_run), "--method", "par", "--threads", "1"]) == 0
    cfg = load_config(str(cam_run / "config.yaml"), ["seed=6"])
    other_run = tmp_path / "retrained"
    Trainer(cfg, other_run, show_progress=False).fit()
    folder = cam_run / "refine" / "par" / "train"
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    capsys.readouterr()
    # the same settings, another network: its masks would be stale, so neither skipped nor mixed
    assert main(["refine", "--run", str(other_run), "--method", "par", "--threads", "1", "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "models.classifier: " in err and "--overwrite" in err
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_par_masks_stay_within_the_image_tags(cam_run):
    from tagseg.data.build import build_index
    cfg = load_config(str(cam_run / "config.yaml"))
    index = build_index(cfg.data, "train")
    out = cam_run / "refine" / "par" / "train" / "masks"
    if not out.is_dir():
        main(["refine", "--run", str(cam_run), "--method", "par", "--threads", "1"])
    for rec in index.records:
        mask = np.asarray(Image.open(out / f"{rec.id}.png"))
        allowed = set(np.flatnonzero(rec.labels > 0.5).tolist())
        assert set(np.unique(mask).tolist()) <= allowed


@pytest.mark.parametrize("method", ["irn", "psa"])
def test_trained_walk_methods_end_to_end(cam_run, method, capsys):
    assert main(["refine", "--run", str(cam_run), "--method", method, "--threads", "1", *SMALL_HEADS]) == 0
    base = cam_run / "refine" / method
    assert (base / "model.safetensors").is_file() and (base / "history.jsonl").is_file()
    labels = _masks(base / "labels" / "train")
    assert len(labels) == 4 and all(set(np.unique(v).tolist()) <= set(range(21)) | {255} for v in labels.values())
    masks = _masks(base / "train" / "masks")
    assert len(masks) == 4 and all(m.shape == (48, 64) and m.max() < 21 for m in masks.values())
    # a second call reuses the trained network and the masks
    assert main(["refine", "--run", str(cam_run), "--method", method, "--threads", "1", *SMALL_HEADS]) == 0
    # the walk's settings may change (into another folder) with the head reused ...
    walk = "refine.irn.beta=8" if method == "irn" else "refine.psa.logt=4"
    assert main(["refine", "--run", str(cam_run), "--method", method, "--threads", "1", "--out",
                 str(cam_run / f"walk-{method}"), *SMALL_HEADS, walk]) == 0
    assert len(_masks(cam_run / f"walk-{method}" / "masks")) == 4
    # ... and so may the images refined
    assert main(["refine", "--run", str(cam_run), "--method", method, "--threads", "1", "--out",
                 str(cam_run / f"two-{method}"), *SMALL_HEADS, "data.max_images=2"]) == 0
    assert len(_masks(cam_run / f"two-{method}" / "masks")) == 2
    # ... but a head trained with other settings is refused, naming the key, and nothing is written
    capsys.readouterr()
    other = cam_run / f"other-{method}"
    assert main(["refine", "--run", str(cam_run), "--method", method, "--threads", "1", "--out", str(other),
                 *SMALL_HEADS, f"refine.{method}.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert f"refine.{method}.epochs: 1 -> 2" in err and "trained with other settings" in err
    assert not other.exists()


def test_a_head_trained_on_another_classifier_is_refused(cam_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(cam_run, run, ignore=shutil.ignore_patterns(".lock*"))
    assert main(["refine", "--run", str(run), "--method", "irn", "--threads", "1", *SMALL_HEADS]) == 0
    head = run / "refine" / "irn" / "model.safetensors"
    from tagseg.engine.checkpoint import read_safetensors_metadata
    assert read_safetensors_metadata(head)["classifier_sha256"] == file_sha256(run / "model.safetensors")
    labels = json.loads((run / "refine" / "irn" / "labels" / "train" / "manifest.json").read_text())
    assert labels["models"] == {"classifier": file_sha256(run / "model.safetensors")}
    # the classifier trained again into the same run folder: its old head (and old masks) are stale
    retrained = tmp_path / "retrained"
    Trainer(load_config(str(cam_run / "config.yaml"), ["seed=7"]), retrained, show_progress=False).fit()
    shutil.copyfile(retrained / "model.safetensors", run / "model.safetensors")
    capsys.readouterr()
    assert main(["refine", "--run", str(run), "--method", "irn", "--threads", "1", "--out", str(tmp_path / "new"),
                 *SMALL_HEADS]) == 2
    err = capsys.readouterr().err
    assert "was trained on another classifier" in err and str(run / "refine" / "irn") in err
    assert not (tmp_path / "new").exists()


def test_check_head_classifier_by_hand(tmp_path):
    from tagseg.errors import ConfigError
    from tagseg.refine.train import check_head_classifier

    check_head_classifier({"classifier_sha256": "a" * 64}, "a" * 64, tmp_path / "h")
    check_head_classifier({}, "a" * 64, tmp_path / "h")  # a head of an earlier version: not checked
    check_head_classifier({"classifier_sha256": "a" * 64}, None, tmp_path / "h")  # a caller that states none
    with pytest.raises(ConfigError, match=r"sha256 aaaaaaaaaaaa… where the run's is now bbbbbbbbbbbb…"):
        check_head_classifier({"classifier_sha256": "a" * 64}, "b" * 64, tmp_path / "h")


def test_par_on_a_patch_family_run(tmp_path):
    cfg = load_config("demo", [f"data.root={tmp_path / 'data'}", "data.synthetic_train=4", "data.synthetic_val=2",
                               "data.synthetic_size=64", "data.image_size=64", "pseudo.image_size=64",
                               "train.epochs=1", "train.batch_size=4", "data.num_workers=0", "train.cpu_threads=1"])
    Trainer(cfg, tmp_path / "run", show_progress=False).fit()
    assert main(["refine", "--run", str(tmp_path / "run"), "--method", "par", "--threads", "1",
                 "--shard", "0/2"]) == 0
    masks = _masks(tmp_path / "run" / "refine" / "par" / cfg.data.pseudo_split / "masks")
    assert len(masks) == 2      # shard 0 of 2 of the 4 training images


def test_unknown_refine_key_is_refused(cam_run, capsys):
    assert main(["refine", "--run", str(cam_run), "--method", "par", "refine.par.wrong=1"]) == 2


def test_eval_scores_refined_masks_and_the_report_shows_them_beside_seed_and_crf(cam_run, tmp_path):
    assert main(["pseudo", "--run", str(cam_run), "--crf", "torch", "--threads", "1"]) == 0
    if not (cam_run / "refine" / "par" / "train" / "masks").is_dir():
        main(["refine", "--run", str(cam_run), "--method", "par", "--threads", "1"])
    for folder in (cam_run / "pseudo" / "train" / "masks", cam_run / "pseudo" / "train" / "crf" / "masks",
                   cam_run / "refine" / "par" / "train" / "masks"):
        assert main(["eval", "--pred", str(folder), "--run", str(cam_run)]) == 0
    summary = json.loads((cam_run / "refine" / "par" / "train" / "eval.json").read_text())
    assert summary["images"] == 4 and 0.0 <= summary["miou"] <= 1.0
    out = tmp_path / "report.html"
    assert main(["report", str(cam_run), "--out", str(out)]) == 0
    html = out.read_text()
    assert "refined (crf)" in html and "refined (par)" in html and "pseudo-mask" in html
    assert "refine/par/train" in html


def test_par_with_two_worker_processes_equals_serial(cam_run, tmp_path):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert main(["refine", "--run", str(cam_run), "--method", "par", "--threads", "1", "--out", str(serial)]) == 0
    assert main(["refine", "--run", str(cam_run), "--method", "par", "--threads", "1", "--workers", "2",
                 "--out", str(parallel)]) == 0
    a, b = _masks(serial / "masks"), _masks(parallel / "masks")
    assert len(a) == 4 and a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_par_and_irn_on_a_folder_dataset(tmp_path):
    from fixtures import make_folder
    make_folder(tmp_path / "data", n=4)
    over = [o for o in TINY_VOC if not o.startswith("data.dataset")]
    cfg = load_experiment("cam_voc", [f"data.root={tmp_path / 'data'}", "data.dataset=folder", *over])
    Trainer(cfg, tmp_path / "run", show_progress=False).fit()
    for method in ("par", "irn"):
        assert main(["refine", "--run", str(tmp_path / "run"), "--method", method, "--threads", "1",
                     *SMALL_HEADS]) == 0
        masks = _masks(tmp_path / "run" / "refine" / method / "train" / "masks")
        assert len(masks) == 4 and all(m.shape == (32, 32) and m.max() <= 2 for m in masks.values())


def test_seeds_probabilities_equal_the_pseudo_stage(cam_run):
    import torch

    from tagseg.inference.loading import load_trained_model
    from tagseg.inference.pseudo import merged_probabilities
    from tagseg.refine.seeds import seeds_of
    model, cfg, info = load_trained_model(cam_run / "model.safetensors")
    image = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    labels = np.zeros(21, np.float32)
    labels[[0, 3, 7]] = 1
    seeds = seeds_of(model, image, labels, cfg.pseudo, info["family"])
    assert torch.equal(seeds.probs, merged_probabilities(model, image, labels, cfg.pseudo, "cpu", info["family"]))
    assert seeds.keys.tolist() == [3, 7] and seeds.scores.shape == (2, 48, 64)
    assert abs(float(seeds.scores.max()) - 1.0) < 1e-6      # max-normalised CAMs
