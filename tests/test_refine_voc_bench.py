"""benchmarks/refine_voc.py's walk-setting sweep (one walk per image, every value scored from it)
against the refine stage run once per value and scored from its mask files."""

from __future__ import annotations

import argparse
import shutil

import pytest

from conftest import load_benchmark
from fixtures import make_voc

TINY = ["model.encoder=test_resnet", "model.weights=null", "model.pretrained=false", "data.image_size=64", "pseudo.image_size=64",
        "train.epochs=1", "train.warmup_epochs=0", "train.unfreeze_blocks=1", "train.batch_size=2",
        "refine.irn.crop_size=32", "refine.irn.batch_size=2", "refine.irn.epochs=1", "refine.irn.train_radius=3",
        "refine.psa.crop_size=64", "refine.psa.batch_size=2", "refine.psa.epochs=1", "refine.psa.radius=3",
        "refine.crf=torch", "pseudo.crf=none", "refine.irn.exp_times=3", "refine.psa.logt=3"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from tagseg.inference.loading import load_trained_model
    from tagseg.classify.trainer import Trainer
    bench = load_benchmark("refine_voc")
    data = tmp_path_factory.mktemp("vocbench") / "voc"
    make_voc(data, n=4)
    lists = data / "ImageSets" / "Segmentation"
    for split in ("train_aug", "val"):
        shutil.copy(lists / "train.txt", lists / f"{split}.txt")
    args = argparse.Namespace(voc=str(data), threads=1, size=64, epochs=1, irn_crop=32, psa_crop=64, head_epochs=1,
                              head_batch=2, family="cam", irn_labels=None)
    cfg = bench.cam_config(args, 0, 4, TINY)
    run = tmp_path_factory.mktemp("benchrun") / "run"
    Trainer(cfg, run, show_progress=False).fit()
    model, _, info = load_trained_model(run / "model.safetensors")
    return bench, args, run, model, info["family"]


@pytest.mark.parametrize("method,key,grid", [("irn", "refine.irn.bg_thres_walk", (0.15, 0.5, 0.85)),
                                             ("psa", "refine.psa.walk_alpha", (4.0, 16.0))])
def test_walk_setting_sweep_equals_one_refine_run_per_value(tiny_run, method, key, grid):
    from tagseg.data.build import build_index
    from tagseg.refine.run import refine_run, train_refine_net
    bench, args, run, model, family = tiny_run
    cfg = bench.cam_config(args, 0, 4, TINY)
    train_refine_net(model, cfg, run, method, family, "cpu", progress=False)
    choice = bench.choose_walk_setting(model, cfg, run, method, family, key, grid)
    assert choice["key"] == key and set(choice["scores"]) == {str(v) for v in grid}
    for value in grid:
        vcfg = bench.cam_config(args, 0, 4, [*TINY, f"{key}={value}"])
        _, masks = refine_run(model, vcfg, run, method, family, "val", progress=False, out=run / "check" / str(value))
        expected = bench.score(masks, build_index(vcfg.data, "val"))["miou"]
        assert choice["scores"][str(value)] == pytest.approx(expected, abs=1e-9)
    assert choice["scores"][str(choice["best"])] == max(choice["scores"].values())


def test_the_cam_recipe_is_pinned_unless_the_shipped_one_is_asked_for():
    bench = load_benchmark("refine_voc")
    base = dict(voc="unused", threads=1, size=64, epochs=1, irn_crop=32, psa_crop=64, head_epochs=1, head_batch=2,
                family="cam", irn_labels=None)
    pinned = bench.cam_config(argparse.Namespace(**base), 0)
    shipped = bench.cam_config(argparse.Namespace(**base, cam_recipe="shipped"), 0)
    assert (pinned.model.bn, pinned.cam.class_prior) == ("adapt", "none")  # the cached rows' recipe
    assert (shipped.model.bn, shipped.cam.class_prior) == ("frozen", "tags")  # cam_voc as shipped


def test_a_cached_result_of_another_image_count_is_refused(tmp_path):
    bench = load_benchmark("refine_voc")
    path = tmp_path / "bench" / "par_val.json"
    calls = []
    first = bench.cached(path, lambda: calls.append(1) or {"miou": 0.3}, 50)
    again = bench.cached(path, lambda: calls.append(1) or {"miou": 0.9}, 50)
    assert calls == [1] and first["miou"] == again["miou"] == 0.3 and again["images_per_split"] == 50
    with pytest.raises(SystemExit, match="--images 50, not 1000"):
        bench.cached(path, lambda: {"miou": 0.1}, 1000)


def test_the_table_header_says_how_many_images_each_split_scored():
    """--images caps a split; the header reports what the cells scored, not the cap."""
    bench = load_benchmark("refine_voc")
    res = {"seed-train_aug": {"seed": {"miou": 0.2, "images": 1000}, "crf": {"miou": 0.1, "images": 1000}},
           "seed-val": {"seed": {"miou": 0.3, "images": 300}, "crf": {"miou": 0.3, "images": 300}}}
    header = bench.table(res, argparse.Namespace(images=5000), 0.45).splitlines()[0]
    assert header == "| mask | train_aug (1000 images) | val (300 images) |"
    assert "(first 5000)" in bench.table({}, argparse.Namespace(images=5000), 0.45)  # nothing scored yet
